import pytest

from genlab.config import Config, ConfigError, apply_overrides, load_config, parse_duration, save_config


def test_shipped_recipe_and_overrides():
    cfg = load_config("digits_ddpm", ["train.lr=1e-3", "model.channel_mults=[1,2,2]", "train.time_budget=5m",
                                      "model.class_cond=true"])
    assert cfg.train.lr == 1e-3 and cfg.model.channel_mults == [1, 2, 2] and cfg.model.class_cond is True
    assert parse_duration(cfg.train.time_budget) == 300


def test_yaml_round_trip(tmp_path):
    cfg = load_config("digits_ddpm", ["model.width=24"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("override,message", [
    ("model.widht=3", "did you mean 'model.width'"),
    ("trian.lr=3", "did you mean 'train'"),
    ("train.lr=fast", "not a valid float"),
    ("train.max_steps=2.5", "not a valid int"),
    ("diffusion.prediction=score", "choose one of eps, x0, v"),
    ("train.precision=fp8", "choose one of auto, fp32, bf16, fp16"),
    ("model.dropout=1.5", "must be a number in [0, 1)"),
    ("train.time_budget=soon", "not a duration"),
    ("sample.steps=5000", "exceeds diffusion.timesteps"),
    ("train.batch_size=10", "divisible by train.grad_accum"),
    ("train", "must look like section.key=value"),
    ("train=3", "is a section"),
])
def test_bad_values_are_named(override, message):
    extra = ["train.grad_accum=3"] if "grad_accum" in message else []
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("digits_ddpm", extra + [override])


def test_missing_budget_and_unknown_recipe(tmp_path):
    with pytest.raises(ConfigError, match="set a budget"):
        load_config("digits_ddpm", ["train.time_budget=null"])
    with pytest.raises(ConfigError, match="Did you mean 'digits_ddpm'"):
        load_config("digits_dpm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.widht'"):
        load_config(str(bad))


def test_durations():
    assert parse_duration("300s") == parse_duration(300) == parse_duration("5m") == 300
    assert parse_duration("1.5h") == 5400
