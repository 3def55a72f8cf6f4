"""The method protocol: the registry, options generated from the methods' dataclasses, a new family in one file
(defined here, in the test), and the typed Run."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import pytest
import torch

from genlab import api, registry
from genlab.cli import build_parser, main
from genlab.config import Config, ConfigError, choice, load_config, num, sample_section
from genlab.methods.base import LIKELIHOODS, Method, register
from genlab.runs import Run
from genlab.train.checkpoint import CheckpointError

TINY = ["train.max_steps=2", "train.warmup_steps=1", "train.val_every=0", "train.ckpt_every=0",
        "train.batch_size=8", "train.log_every=1"]


def test_registry_declarations():
    assert {"diffusion", "autoregressive", "any_order", "oneshot", "classifier"} <= set(registry.names())
    for name, cls in registry.METHODS.items():
        assert cls.name == name and cls.family and cls.label and cls.likelihood in LIKELIHOODS
        assert dataclasses.is_dataclass(cls.Options)
    with pytest.raises(ValueError, match="did you mean 'diffusion'"):
        registry.method_class("difusion")


def test_options_come_from_the_dataclasses():
    """The sample section, the API's keywords and the CLI's flags: one source, every method's Options."""
    sample = {f.name for f in dataclasses.fields(sample_section())}
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["sample"]._actions}
    for cls in registry.METHODS.values():
        for f in dataclasses.fields(cls.Options):
            assert f.name in sample and f.name in flags, (cls.name, f.name)
    cfg = load_config("digits_ddpm", ["sample.k=4"])        # another method's key: accepted, ignored
    assert cfg.sample.k == 4 and not hasattr(registry.method_class("diffusion").Options(), "k")
    with pytest.raises(ConfigError, match="sample.sampler='nope' is not allowed; choose one of ddpm"):
        load_config("digits_ddpm", ["sample.sampler=nope"])


@dataclass
class ToyConfig:
    scale: float = num(1.0, 0.0, 10.0, lo_open=True)
    kind: str = choice("plain", ("plain", "fancy"))


@dataclass
class ToyOptions:
    wobble: float = num(0.0, 0.0, 1.0, help="noise added to the toy's samples")


class ToyNet(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.bias = torch.nn.Parameter(torch.zeros(shape))

    def forward(self, n):
        return self.bias.expand(n, *self.shape)


class ToyMethod(Method):
    """A whole family in a few lines: it learns the mean image."""
    name, family, label = "toy_test", "toy", "toy"
    section, Section = "toy_test", ToyConfig
    Options = ToyOptions
    likelihood = "none"

    def build_model(self, shape, num_classes=0, levels=256, **kw):
        return ToyNet(shape)

    def loss(self, model, batch, rng):
        return ((model(batch["x"].shape[0]) - batch["x"]) ** 2).mean() * self.cfg.toy_test.scale

    def sample_batch(self, model, seeds, opts, *, y=None, device=None, callback=None):
        from genlab.diffusion import PerSampleNoise

        net = getattr(model, "module", model)
        x = net(len(seeds)) + opts.wobble * PerSampleNoise(seeds).randn((len(seeds), *net.shape), device)
        return x.clamp(-1, 1), 1


@pytest.fixture
def toy():
    register(ToyMethod)
    yield ToyMethod
    registry.METHODS.pop(ToyMethod.name)


def test_a_new_family_is_one_class(toy, tmp_path):
    cfg = load_config("digits_ddpm", ["method=toy_test", "toy_test.scale=2", *TINY])
    assert cfg.toy_test.scale == 2 and cfg.to_dict()["toy_test"] == {"scale": 2.0, "kind": "plain"}
    with pytest.raises(ConfigError, match="toy_test.kind='x' is not allowed; choose one of plain, fancy"):
        load_config("digits_ddpm", ["method=toy_test", "toy_test.kind=x"])
    with pytest.raises(ConfigError, match="unknown config key 'toy_test.scal'"):
        load_config("digits_ddpm", ["method=toy_test", "toy_test.scal=1"])
    res = api.train(cfg, name="toy", runs_root=tmp_path, progress=False)
    assert res.state.step == 2
    x, nfe, _ = api.sample(res.run_dir, n=3, wobble=0.5, progress=False)
    assert x.shape == (3, 1, 8, 8) and nfe == 1
    one, _, _ = api.sample(res.run_dir, n=1, seed=2, wobble=0.5, progress=False)
    assert torch.equal(one[0], x[2])                         # sample i is seed + i, whatever the batch
    with pytest.raises(ValueError, match="--steps does not apply to toy_test models"):
        api.sample(res.run_dir, n=2, steps=3)
    assert main(["sample", "--ckpt", str(res.run_dir), "--wobble", "2", "--out", str(tmp_path / "a.png")]) == 2
    # resuming with another value of the method's own section is refused: every section counts
    with pytest.raises(CheckpointError, match="the config differs in toy_test.scale: checkpoint has 2.0"):
        api.train(load_config("digits_ddpm", ["method=toy_test", "toy_test.scale=3", *TINY[1:],
                                              "train.max_steps=4"]), name="toy", runs_root=tmp_path, resume=True,
                  progress=False)


def test_load_run_is_typed_and_the_tuple_is_deprecated(cond_run):
    run = api.load_run(cond_run)
    assert isinstance(run, Run) and isinstance(run.config, Config) and run.ema is run.model
    assert run.state["step"] > 0 and run.path.name.startswith("step_") and run.run_dir == cond_run
    with pytest.warns(DeprecationWarning, match="unpacking it"):
        cfg, method, model, state = run
    assert cfg is run.config and model is run.model and state is run.state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert api.load_run(cond_run, use_ema=False).ema is None
