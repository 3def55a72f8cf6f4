"""Every number from a user is checked for range and finiteness where it enters (config, CLI, API), every
list-valued key element by element, with the range declared once beside its dataclass field (issue 11)."""
import dataclasses

import pytest

import genlab.api as api
from genlab.cli import main
from genlab.config import CommandOptions, Config, ConfigError, Range, load_config



@pytest.fixture
def run(cond_run):
    return cond_run


def test_nan_learning_rate_is_refused_before_the_run_directory_exists(tmp_path, tiny, capsys):
    """NaN was accepted as a learning rate and caught by torch only after the run directory existed."""
    for lr in ("nan", ".nan", "inf", "-1e-3", "0"):
        assert main(["train", *tiny, "train.max_steps=2", f"train.lr={lr}", "--name", "n", "--runs-dir",
                     str(tmp_path)]) == 2
        assert "train.lr=" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("args,message", [
    (["--eta", "nan"], "eta=nan must be a number in [0, 1]"),
    (["--eta", "2"], "eta=2.0 must be a number in [0, 1]"),
    (["--guidance", "nan", "--class", "3"], "guidance=nan must be a number in [0, 1000]"),
    (["--guidance", "inf", "--class", "3"], "guidance=inf must be"),
    (["--n", "0"], "n=0 must be an integer in 1..10000000"),
    (["--batch-size", "0"], "batch_size=0 must be an integer in 1..1048576"),
    (["--seed", "-1"], "seed=-1 must be an integer in 0..4294967295"),
    (["--seed", str(2 ** 70)], "seed=1180591620717411303424 must be an integer in 0..4294967295"),
    (["--steps", "0"], "steps=0 must be an integer in 1..100000"),
    (["--nrow", "0"], "nrow=0 must be"),
    (["--classifier-scale", "nan"], "classifier_scale=nan must be"),
    (["--class", str(2 ** 70)], "labels must be in 0..9"),
])
def test_sample_options_are_checked(run, tmp_path, capsys, args, message):
    """NaN as --eta or --guidance gave blank images with exit status 0; --n 0, --batch-size 0 and huge seeds
    ended in internal errors; --steps 0 silently meant the default."""
    rc = main(["sample", "--ckpt", str(run), "--out", str(tmp_path / "x.png"), "--steps", "2", "--n", "2", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()


def test_eval_counts_are_checked(run, capsys):
    for args, message in ((["--seeds", "0"], "seeds=0 must be an integer in 1..1000"),
                          (["--n", "0"], "n=0 must be"), (["--batch-size", "0"], "batch_size=0 must be"),
                          (["--steps", "0"], "steps=0 must be"), (["--bpd", "--t-samples", "0"], "t_samples=0")):
        assert main(["eval", "--ckpt", str(run), "--steps", "1", "--n", "4", *args]) == 2
        assert message in capsys.readouterr().err


def test_the_api_checks_the_same_ranges(run):
    with pytest.raises(ConfigError, match="eta=nan"):
        api.sample(run, n=2, steps=1, eta=float("nan"))
    with pytest.raises(ConfigError, match="steps=0"):
        api.sample(run, n=2, steps=0)
    with pytest.raises(ConfigError, match="n=0"):
        api.sample(run, n=0)


@pytest.mark.parametrize("override,message", [
    ("train.adam_betas=[a,b]", "element 0 ('a') must be a number in [0, 1)"),
    ("train.adam_betas=[0.9]", "must have 2 element(s)"),
    ("train.adam_betas=[0.9,1.0]", "element 1 (1.0) must be a number in [0, 1)"),
    ("model.channel_mults=[1.5,2]", "element 0 (1.5) must be an integer in 1..64"),
    ("model.channel_mults=[]", "must have 1..8 element(s)"),
    ("model.channel_mults=[true]", "element 0 (True) must be an integer"),
    ("model.attn_resolutions=abc", "element 0 ('abc') must be an integer in 1..4096"),
    ("model.attn_resolutions=[4,-1]", "element 1 (-1)"),
    ("model.channel_mults=[1", "is not a valid list"),
])
def test_list_valued_keys_are_checked_element_by_element(override, message):
    """train.adam_betas=[a,b] and model.channel_mults=[1.5,2] were tracebacks; attn_resolutions=abc was
    silently ignored."""
    with pytest.raises(ConfigError) as e:
        load_config("digits_ddpm", [override])
    assert message in str(e.value)


def test_integral_list_elements_become_ints():
    cfg = load_config("digits_ddpm", ["model.channel_mults=[1.0,2]"])
    assert cfg.model.channel_mults == [1, 2] and all(type(m) is int for m in cfg.model.channel_mults)


def test_every_numeric_field_declares_its_range():
    """Declared once beside the field: every int or float field of the config and of the command options has
    a Range (strings and booleans have their own checks)."""
    import typing

    missing = []
    for sec in [CommandOptions] + [type(s) for s in Config().sections().values()]:
        hints = typing.get_type_hints(sec)
        for f in dataclasses.fields(sec):
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            numeric = any(a in (int, float, list, tuple) or typing.get_origin(a) in (list, tuple) for a in args)
            if numeric and not isinstance(f.metadata.get("range"), Range):
                missing.append(f"{sec.__name__}.{f.name}")
    assert missing == ["DataConfig.channels"], missing      # channels: the choice 1 | 3, checked by name


def test_range_messages():
    assert Range(0, 1, hi_open=True).describe() == "a number in [0, 1)"
    assert Range(1, 10, integer=True).describe() == "an integer in 1..10"
    assert Range(0, lo_open=True).describe() == "a number > 0"
    with pytest.raises(ConfigError, match="x=nan must be a number in"):
        Range(0, 1).check("x", float("nan"))
