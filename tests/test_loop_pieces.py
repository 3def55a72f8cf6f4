"""The named pieces of the training loop: the optimizer set-up, the EMA decay, the resume config check, and a
method that brings its own optimizers and step (two optimizers, as a GAN has), saved and resumed exactly."""
import json
from dataclasses import dataclass, field

import pytest
import torch

from genlab.config import Config
from genlab.data import ImageDataset
from genlab.train import checkpoint as ck
from genlab.train.loop import (apply_gradients, build_optimizer, check_finite, clip_gradients, config_mismatch,
                               ema_decay_at, ema_update, micro_batch, optimizers_state_dict, reduce_step, set_lr,
                               split_optimizers_state_dict, train)


def test_build_optimizer_decays_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Conv2d(4, 2, 3))
    t = Config().train
    t.weight_decay, t.lr, t.adam_betas = 0.05, 3e-4, [0.8, 0.95]
    opt = build_optimizer(model, t)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert [p.dim() for p in decay["params"]] == [2, 4] and decay["weight_decay"] == 0.05
    assert [p.dim() for p in no_decay["params"]] == [1, 1, 1, 1] and no_decay["weight_decay"] == 0.0
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.8, 0.95) for g in opt.param_groups)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ema_decay_at_warms_up_then_holds():
    t = Config().train
    t.ema_decay, t.ema_warmup = 0.999, True
    assert ema_decay_at(t, 0) == pytest.approx(0.1)
    assert ema_decay_at(t, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(t, 10 ** 6) == 0.999
    t.ema_warmup = False
    assert ema_decay_at(t, 0) == 0.999


@dataclass
class ExtraSection:
    k: int = 3
    name: str = "a"


@dataclass
class ConfigWithExtra(Config):
    extra: ExtraSection = field(default_factory=ExtraSection)


def test_config_mismatch_covers_every_shaping_section():
    cfg = Config()
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert config_mismatch(saved, cfg) == []
    cfg.train.lr, cfg.train.batch_size, cfg.sample.n = 0.5, 7, 3          # train and sample shape nothing
    assert config_mismatch(saved, cfg) == []
    cfg.model.width = 16
    assert config_mismatch(saved, cfg) == ["model.width: checkpoint has 32, config has 16"]

    new = ConfigWithExtra()                    # a section added after the checkpoint was written
    old = json.loads(json.dumps(Config().to_dict()))
    assert "extra" in new.to_dict() and "extra" not in old
    assert config_mismatch(old, new) == [], "a new section at its defaults: an old checkpoint still resumes"
    new.extra.k = 5
    assert config_mismatch(old, new) == ["extra.k: checkpoint has None, config has 5"]
    saved = json.loads(json.dumps(new.to_dict()))
    assert config_mismatch(saved, new) == []
    new.extra.name = "b"
    assert config_mismatch(saved, new) == ["extra.name: checkpoint has 'a', config has 'b'"]
    saved["model"]["gone"] = 1                 # a key the config no longer has
    saved["removed_section"] = {"x": 1}
    new.extra.name = "a"
    assert config_mismatch(saved, new) == []


# ------------------------------------------------------------------------------------------------ method hooks

class TwoOptimizers:
    """A toy two-player method: an encoder and a decoder, each with its own optimizer, stepped in turn."""

    def __init__(self):
        self.steps = 0

    def configure_optimizers(self, model, train_cfg):
        return [torch.optim.Adam(model[0].parameters(), lr=train_cfg.lr, betas=(0.5, 0.9)),
                torch.optim.SGD(model[1].parameters(), lr=train_cfg.lr, momentum=0.9)]

    def loss(self, model, batch, rng):
        x = batch["x"].flatten(1)
        return ((model(x + 0.1 * rng.randn(x.shape[1])) - x) ** 2).mean()

    def train_step(self, tr, lr):
        self.steps += 1
        batch, rng = micro_batch(tr, 0)
        total = 0.0
        for j, opt in enumerate(tr.optimizers):          # one player after the other
            set_lr([opt], lr * (j + 1))
            loss = self.loss(tr.ddp_model, batch, rng)
            loss.backward()
            total += loss.item()
            for other in tr.optimizers[:j] + tr.optimizers[j + 1:]:
                other.zero_grad(set_to_none=True)
            check_finite(tr, loss.item(), clip_gradients(tr), lr)
            apply_gradients(tr, [opt])
        out = reduce_step(tr, total / 2)
        ema_update(tr.ema, tr.model, ema_decay_at(tr.cfg.train, tr.state.step))
        return out


def _run(tmp_path, name, steps, resume=False):
    cfg = Config()
    t = cfg.train
    t.max_steps, t.batch_size, t.warmup_steps, t.log_every, t.val_every, t.ckpt_every = steps, 4, 1, 1, 0, 2
    t.device, t.lr, t.lr_schedule = "cpu", 1e-2, "constant"   # (cosine would follow max_steps)
    data = ImageDataset(x=torch.randint(0, 2, (12, 1, 4, 4), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8), y=None, levels=2, num_classes=0, name="toy")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 6), torch.nn.Linear(6, 16))
    method = TwoOptimizers()
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    res = train(cfg, run, method=method, model=model, train_data=data, resume=resume, progress=False,
                log=lambda s: None)
    return res, method


def test_a_method_with_two_optimizers_trains_saves_and_resumes_exactly(tmp_path):
    res, method = _run(tmp_path, "full", 4)
    assert res.state.step == 4 and method.steps == 4 and len(res.history) == 4
    part, _ = _run(tmp_path, "part", 2)
    assert part.state.step == 2
    more, method2 = _run(tmp_path, "part", 4, resume=True)
    assert more.state.step == 4 and method2.steps == 2, "resumed at step 2"

    a, b = ck.load_checkpoint(res.checkpoint), ck.load_checkpoint(more.checkpoint)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["ema"][k], b["ema"][k])
    sa, sb = (split_optimizers_state_dict(x["optimizer"], 2) for x in (a, b))
    assert sa[0]["param_groups"][0]["betas"] == [0.5, 0.9] and "momentum_buffer" in sa[1]["state"][0]
    for pa, pb in zip(sa, sb):
        assert pa["state"].keys() == pb["state"].keys()
        for i in pa["state"]:
            for key, v in pa["state"][i].items():
                assert torch.equal(v, pb["state"][i][key]) if torch.is_tensor(v) else v == pb["state"][i][key]
    with pytest.raises(ck.CheckpointError, match="2 optimizer"):
        split_optimizers_state_dict(a["optimizer"], 1)


def test_one_optimizer_is_saved_in_its_own_format_and_several_round_trip():
    m = torch.nn.Linear(3, 2)
    one = torch.optim.AdamW(m.parameters())
    m(torch.ones(1, 3)).sum().backward()
    one.step()
    assert optimizers_state_dict([one]) == one.state_dict()
    two = [torch.optim.SGD([m.weight], lr=0.1, momentum=0.5), torch.optim.Adam([m.bias])]
    for o in two:
        o.step()
    parts = split_optimizers_state_dict(optimizers_state_dict(two), 2)
    for o, p in zip(two, parts):
        sd = o.state_dict()
        assert p["param_groups"] == sd["param_groups"] and p["state"].keys() == sd["state"].keys()
