"""The discrete methods through the CLI, and `genlab compare` end to end (quick) with its generated summary."""
import json
import math

import numpy as np
import pytest
from PIL import Image

import genlab.api as api
from genlab.cli import main
from genlab.report.compare import summary

TINY_AR = ["ar.width=8", "ar.layers=3", "ar.kernel_size=3", "ar.heads=2", "train.batch_size=32",
           "train.time_budget=null", "train.warmup_steps=2", "train.log_every=5", "sample.n=4"]
TINY_UNET = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
             "model.num_heads=1", "train.batch_size=32", "train.time_budget=null", "train.warmup_steps=2",
             "train.log_every=5", "sample.n=4", "sample.steps=3", "diffusion.timesteps=50"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, cfg, over in [("pcnn", "digits_pixelcnn", TINY_AR), ("tf", "digits_transformer", TINY_AR),
                            ("ao", "digits_any_order", TINY_UNET), ("one", "digits_oneshot", TINY_AR),
                            ("dif", "digits_ddpm", TINY_UNET)]:
        assert main(["train", "--config", cfg, *over, "train.max_steps=8", "--name", name, "--runs-dir", str(root),
                     "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("name,args,nfe", [("pcnn", [], 64), ("tf", ["--temperature", "0.8", "--top-k", "5"], 64),
                                           ("ao", ["--k", "8"], 8), ("ao", ["--k", "5", "--order", "raster"], 13),
                                           ("one", [], 1)])
def test_sample_discrete_methods(runs, tmp_path, capsys, name, args, nfe):
    out = tmp_path / "g.png"
    assert main(["sample", "--ckpt", str(runs / name), "--n", "4", *args, "--out", str(out)]) == 0
    assert f"({nfe} network evaluations per sample)" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).std() > 0
    proc = tmp_path / "p.png"
    assert main(["sample", "--ckpt", str(runs / name), "--n", "3", *args, "--process", "--out", str(proc)]) == 0
    img = np.asarray(Image.open(proc).convert("RGB"))
    assert img.std() > 0
    if name != "one":   # the canvas fills in: the first frame is all "not yet generated" blue
        assert img[..., 2].mean() > img[..., 0].mean()


def test_any_order_inpainting_keeps_known_pixels(runs):
    import torch

    cfg, method, model, _ = api.load_run(runs / "ao")
    test = api.load_data(cfg, "test")
    known = test.batch(torch.arange(4))["x"]
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[..., :, :4] = True
    x, nfe = method.sample(model, 4, k=4, known=known, known_mask=mask)
    assert torch.equal(x[mask], known[mask]) and nfe == 8


def test_options_of_another_method_and_bad_values_are_clear_errors(runs, capsys):
    cases = [(["--ckpt", str(runs / "dif"), "--k", "4"], "--k does not apply to diffusion"),
             (["--ckpt", str(runs / "pcnn"), "--sampler", "ddim"], "--sampler does not apply to autoregressive"),
             (["--ckpt", str(runs / "pcnn"), "--k", "2"], "it applies to: any_order"),
             (["--ckpt", str(runs / "ao"), "--k", "0"], "integer in 1..64"),
             (["--ckpt", str(runs / "ao"), "--k", "65"], "integer in 1..64"),
             (["--ckpt", str(runs / "ao"), "--order", "spiral"], "random, raster"),
             (["--ckpt", str(runs / "tf"), "--temperature", "0"], "temperature=0.0 must be a number in (0, 100]")]
    for args, msg in cases:
        assert main(["sample", *args, "--n", "2", "--out", "/tmp/never.png"]) == 2, args
        assert msg in capsys.readouterr().err, args


def test_resume_with_another_method_is_refused(runs, capsys):
    assert main(["train", "--config", "digits_any_order", *TINY_UNET, "train.max_steps=10", "--name", "pcnn",
                 "--runs-dir", str(runs), "--resume", "--no-progress"]) == 2
    assert "method" in capsys.readouterr().err


def test_eval_reports_test_bits_per_dim(runs, tmp_path, capsys):
    j = tmp_path / "r.json"
    assert main(["eval", "--ckpt", str(runs / "one"), "--n", "50", "--bpd", "--json", str(j)]) == 0
    res = json.loads(j.read_text())
    assert res["test_n"] == 360 and 1.0 < res["test_bpd"] < 4.1 and math.isfinite(res["fid_train"])
    assert "test bits/dim" in capsys.readouterr().out


def test_compare_quick_end_to_end(tmp_path):
    from genlab.report.compare import run

    out = run("compare_digits", tmp_path / "cmp", quick=True, progress=False)
    res = json.loads((out / "results.json").read_text())
    names = res["_spec"]["order"]
    assert names == ["oneshot", "pixelcnn", "transformer", "any_order", "ddpm_eps", "ddpm_x0", "ddpm_v", "flow",
                     "masked", "gan", "vae", "nflow"]
    for name in names:
        rec = res[name]
        if name == "gan":
            assert rec["test_bpd"] is None and rec["bpd_kind"] == "none"
        else:
            assert math.isfinite(rec["test_bpd"]) and rec["test_bpd"] > 0
        assert rec["params"] > 0
        assert rec["train_images_per_s"] > 0 and rec["rows"]
        for row in rec["rows"].values():
            assert all(math.isfinite(row[k]) for k in ("fid", "precision", "recall", "seconds_per_1000"))
            assert row["nfe"] >= 1
        pics = [g["path"] for g in rec["pictures"]["grids"]] + [rec["pictures"]["process"]["path"]]
        for p in pics:
            assert np.asarray(Image.open(out / "img" / p)).std() > 0, p
    assert {r["nfe"] for r in res["any_order"]["rows"].values()} == {64, 32, 16, 8, 4}
    readme = (out / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| ") and "method" not in line]
    # DDPM-1000 rows are left out of --quick; flow matching, masked; GAN, VAE (mean, sampled), flow (T 1, 0.7)
    assert len(table) == 1 + 1 + 1 + 5 + 3 * 3 + 5 + 5 + 1 + 2 + 2
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "GAN":
            assert cells[2] == "- (no likelihood)"
        else:
            float(cells[2].split()[0])                                            # numeric bits/dim
        float(cells[3].split()[0]), int(cells[6])                                 # FID, evaluations
    assert "reconstructions" in readme and "No likelihood: GAN" in readme
    assert "## Summary" in readme and "<table>" in (out / "index.html").read_text()
    assert np.asarray(Image.open(out / "img" / "fid_vs_nfe.png")).std() > 0
    # a second call reuses the finished runs and cached evaluations
    stamp = (out / "runs" / "pixelcnn" / "done.json").stat().st_mtime
    run("compare_digits", out, quick=True, progress=False)
    assert (out / "runs" / "pixelcnn" / "done.json").stat().st_mtime == stamp


def _rows(ar_fid, dif_fid, ar_bpd=1.7, dif_bpd=2.5):
    base = dict(test_bpd_sem=0.01, params=1000, train_images_per_s=100.0, precision=0.5, recall=0.5,
                seconds_per_1000=1.0, fid_std=0.0)
    return [dict(base, name="pixelcnn", label="PixelCNN", family="autoregressive", method="autoregressive",
                 test_bpd=ar_bpd, bpd_kind="exact", sampler="raster", nfe=64, fid=ar_fid),
            dict(base, name="ddpm", label="DDPM v", family="diffusion", method="diffusion", test_bpd=dif_bpd,
                 bpd_kind="bound", sampler="dpmpp-2m-20", nfe=20, fid=dif_fid),
            dict(base, name="oneshot", label="one-shot", family="one-shot", method="oneshot", test_bpd=3.5,
                 bpd_kind="exact", sampler="one-shot", nfe=1, fid=100.0),
            dict(base, name="ao", label="any-order", family="any-order AR", method="any_order", test_bpd=1.9,
                 bpd_kind="estimate", sampler="k=1 random order", nfe=64, fid=12.0),
            dict(base, name="ao", label="any-order", family="any-order AR", method="any_order", test_bpd=1.9,
                 bpd_kind="estimate", sampler="k=16 random order", nfe=4, fid=30.0)]


def test_summary_is_generated_from_the_numbers():
    a = "\n".join(summary(_rows(ar_fid=20.0, dif_fid=5.0)))
    assert "Best sample quality: **DDPM v**" in a
    assert "diffusion is better by 4.00x" in a
    assert "Best test likelihood: **PixelCNN** at 1.700" in a
    assert "The best likelihood is not the best sample quality" in a
    assert "FID rises from 12.00 to 30.00" in a
    assert "FID 100.00 with 1 evaluation, the worst" in a
    # swap the two methods' FIDs and likelihoods: every statement about them follows
    b = "\n".join(summary(_rows(ar_fid=5.0, dif_fid=20.0, ar_bpd=2.5, dif_bpd=1.7)))
    assert "Best sample quality: **PixelCNN**" in b
    assert "raster autoregression is better by 4.00x" in b
    assert "Best test likelihood: **DDPM v** at 1.700" in b
    assert "worse than raster AR" in b
    assert "with 3.2x the network evaluations of the other" in b   # the winner (AR, 64) vs diffusion (20)
    assert "with 1/3.2 the network evaluations of the other" in a
    assert a != b
    c = "\n".join(summary(_rows(ar_fid=20.0, dif_fid=5.0, ar_bpd=2.5, dif_bpd=1.7)))
    assert "The best likelihood is not the best sample quality" not in c   # DDPM v now best at both


def test_specs_and_recipes_are_not_confused(capsys, tmp_path):
    assert main(["train", "--config", "compare_digits", "--runs-dir", str(tmp_path)]) == 2
    assert "genlab compare --config compare_digits" in capsys.readouterr().err
    assert main(["compare", "--config", "digits_ddpm", "--out", str(tmp_path / "c")]) == 2
    assert "not a comparison spec" in capsys.readouterr().err


def test_a_finished_run_stays_finished_when_genlab_gains_a_config_section(tmp_path):
    """done.json written before a method (and its config section) was added still matches: the new section
    holds its defaults. It used to compare the whole dict, so adding the GAN retrained every finished run."""
    from genlab.config import load_config
    from genlab.report.compare import is_finished

    cfg = load_config("digits_ddpm")
    old = cfg.to_dict()
    del old["gan"], old["vae"]["z_dim"]
    (tmp_path / "done.json").write_text(json.dumps({"config": old}))
    assert is_finished(tmp_path, cfg)
    old["train"]["lr"] = 1.0
    (tmp_path / "done.json").write_text(json.dumps({"config": old}))
    assert not is_finished(tmp_path, cfg)
    assert not is_finished(tmp_path, load_config("digits_ddpm", ["gan.z_dim=3"]))
