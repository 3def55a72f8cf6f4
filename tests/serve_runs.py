"""The runs directory the web-app tests serve: tiny diffusion, raster AR, class- and text-conditional runs, a GAN,
a run that is still "training" (a status file of this test process), a damaged run and a compare report
(a few files in compare's format, so that no comparison is trained here)."""
import json
import os
import socket
import time
from pathlib import Path

from PIL import Image

from genlab.cli import main

TINY_AR = ["ar.width=8", "ar.layers=3", "ar.kernel_size=3", "train.batch_size=32", "train.time_budget=null",
           "train.warmup_steps=2", "train.log_every=2", "sample.n=4", "train.num_threads=1"]
TINY_UNET = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
             "model.num_heads=1", "train.batch_size=32", "train.time_budget=null", "train.warmup_steps=2",
             "train.log_every=2", "sample.n=4", "sample.steps=20", "diffusion.timesteps=50", "train.num_threads=1",
             "train.sample_every=3"]
TINY_TEXT = ["data.name=shapes", "data.image_size=16", "model.width=8", "model.channel_mults=[1,2]",
             "model.num_res_blocks=1", "model.attn_resolutions=[8]", "model.num_heads=2", "model.text_cond=true",
             "model.text_width=16", "model.text_layers=1", "diffusion.timesteps=50", "diffusion.cond_drop=0.2",
             "train.batch_size=16", "train.time_budget=null", "train.warmup_steps=1", "train.num_threads=1",
             "sample.steps=4", "sample.n=4"]
RUNS = [("dif", "digits_ddpm", TINY_UNET), ("pcnn", "digits_pixelcnn", TINY_AR),
        ("cfg", "digits_cfg", TINY_UNET), ("txt", "shapes_text", TINY_TEXT),
        ("gan", "digits_gan", ["model.width=8", "gan.z_dim=8", "train.batch_size=16", "train.time_budget=null",
                               "train.num_threads=1", "train.log_every=2"])]


def make_runs(root: Path) -> Path:
    for name, cfg, over in RUNS:
        assert main(["train", "--config", cfg, *over, "train.max_steps=6", "--name", name, "--runs-dir", str(root),
                     "--no-progress"]) == 0, name
    # a run still "training": this process writes its status (alive pid), metrics grow during the test
    live = root / "live"
    live.mkdir()
    (live / "config.yaml").write_text((root / "dif" / "config.yaml").read_text())
    (live / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 0.5, "time_used": 1.0}) + "\n")
    (live / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                                  "heartbeat": time.time(), "step": 2, "time_used": 1.0}))
    # a run whose process died while training
    dead = root / "dead"
    dead.mkdir()
    (dead / "config.yaml").write_text((root / "dif" / "config.yaml").read_text())
    (dead / "status.json").write_text(json.dumps({"status": "running", "pid": 2 ** 22 + 12345,
                                                  "host": socket.gethostname(), "heartbeat": 0, "step": 9}))
    # damaged: config.yaml is not YAML; half written: a checkpoint directory without state.json
    bad = root / "broken"
    bad.mkdir()
    (bad / "config.yaml").write_text("method: [unclosed\n")
    (dead / "checkpoints" / "step_0000009").mkdir(parents=True)
    # a compare report
    rep = root / "cmp"
    (rep / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(rep / "img" / "fid_vs_nfe.png")
    (rep / "index.html").write_text("<!doctype html><html><head><title>genlab compare</title></head><body>"
                                    "<h1>genlab compare</h1><img src='img/fid_vs_nfe.png'></body></html>")
    (rep / "results.json").write_text(json.dumps({"_spec": {"data": "digits", "budget": "300s", "order": ["a"]},
                                                  "a": {"rows": {}}}))
    return root
