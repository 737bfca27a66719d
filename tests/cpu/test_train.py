"""Trainer: the loss falls, runs are deterministic and resumable, checkpoints load or fail loudly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm_rt.commands.train import train as train_command
from ddpm_rt.datasets import load_dataset
from ddpm_rt.errors import ConfigError, SourceError
from ddpm_rt.models.catalog import BUILTIN
from ddpm_rt.train.checkpoint import load_checkpoint
from ddpm_rt.train.trainer import TrainConfig, train

# tiny variants of each built-in so a few dozen steps take about a second
TINY = {
    "digits": {"base_channels": 8, "channel_mult": [1, 2], "attn_levels": [1]},
    "swissroll": {"hidden": 32},
    "interp-digits": {"channels": 8, "t_dim": 16, "bottleneck": 16},
    "vit-digits": {"dim": 32, "depth": 1, "heads": 2},
    "cond-digits": {"base_channels": 8, "channel_mult": [1, 2], "attn_levels": [1]},
}


def _cfg(steps: int, **kw) -> TrainConfig:
    base = {"batch_size": 32, "lr": 3e-3, "seed": 0, "warmup": 5, "log_every": 10, "checkpoint_every": 1000}
    return TrainConfig(steps=steps, **{**base, **kw})


def _cfg_for(kind: str, steps: int) -> TrainConfig:
    return _cfg(steps, label_dropout=BUILTIN[kind].train_defaults.get("label_dropout", 0.0))


@pytest.mark.parametrize("kind", sorted(TINY))
def test_a_few_steps_reduce_the_loss(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    res = train(kind, tmp_path / kind, _cfg_for(kind, 60), progress=False, model_config=TINY[kind])
    losses = [h[1] for h in res.history]
    assert res.step == 60 and len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses


def test_training_is_deterministic_and_resumable(tmp_path: Path) -> None:
    a = train("swissroll", tmp_path / "a", _cfg(40), progress=False, model_config=TINY["swissroll"])
    b = train("swissroll", tmp_path / "b", _cfg(40), progress=False, model_config=TINY["swissroll"])
    assert a.history == b.history
    wa, wb = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # resume: the run continues from the saved step with the saved optimizer and config
    c = train("swissroll", tmp_path / "a", _cfg(70), progress=False)
    assert (c.start_step, c.step) == (40, 70)
    assert [h[0] for h in c.history] == [10, 20, 30, 40, 50, 60, 70]
    cfg = json.loads((tmp_path / "a/config.json").read_text())
    assert cfg["step"] == 70 and cfg["model_config"]["hidden"] == 32
    state = load_file(str(tmp_path / "a/train_state.safetensors"))
    assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in state)
    # already there: nothing to do, nothing rewritten
    d = train("swissroll", tmp_path / "a", _cfg(70), progress=False)
    assert d.step == d.start_step == 70


def test_conditional_training_feeds_labels_with_dropout(tmp_path: Path, monkeypatch) -> None:
    from ddpm_rt.train import trainer

    seen: list[torch.Tensor] = []
    real = trainer.DiffusionLoss.__call__

    def spy(self, model, x0, gen, cond=()):
        seen.append(cond[0].clone())
        return real(self, model, x0, gen, cond)

    monkeypatch.setattr(trainer.DiffusionLoss, "__call__", spy)
    train("cond-digits", tmp_path / "c", _cfg(40, batch_size=64, label_dropout=0.2), progress=False,
          model_config=TINY["cond-digits"])
    labels = torch.cat(seen)
    assert labels.dtype == torch.int64 and labels.shape == (40 * 64,)
    null = BUILTIN["cond-digits"].spec.conditioning[0].null
    frac_null = (labels == null).float().mean().item()
    assert 0.15 < frac_null < 0.25, frac_null  # p_uncond = 0.2
    assert set(labels.unique().tolist()) == set(range(11))
    # the checkpoint loads as a conditional module with its spec
    module, spec, cfg = load_checkpoint(tmp_path / "c")
    assert spec == BUILTIN["cond-digits"].spec and cfg["train"]["label_dropout"] == 0.2
    x = torch.from_numpy(load_dataset("digits16").heldout[:4])
    with torch.inference_mode():
        assert module(x, torch.full((4,), 10.0), torch.tensor([0, 1, 2, 10])).shape == x.shape


def test_conditional_training_refuses_an_untrained_null(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="null label 10 but label_dropout is 0"):
        train("cond-digits", tmp_path, _cfg(5), progress=False, model_config=TINY["cond-digits"])
    with pytest.raises(ConfigError, match=r"label_dropout must lie in \[0, 1\)"):
        _cfg(5, label_dropout=1.0)


def test_resume_refuses_another_kind(tmp_path: Path) -> None:
    train("swissroll", tmp_path, _cfg(10), progress=False, model_config=TINY["swissroll"])
    with pytest.raises(ConfigError, match="holds a 'swissroll' checkpoint"):
        train("digits", tmp_path, _cfg(10), progress=False)


def test_load_checkpoint_round_trip(tmp_path: Path) -> None:
    train("vit-digits", tmp_path, _cfg(10), progress=False, model_config=TINY["vit-digits"])
    module, spec, cfg = load_checkpoint(tmp_path)
    assert not module.training and cfg["kind"] == "vit-digits"
    assert spec.schedule.kind == "alpha_power" and spec == BUILTIN["vit-digits"].spec
    ema = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(module.state_dict()[k], v) for k, v in ema.items())
    x = torch.from_numpy(load_dataset("digits16").heldout[:4])
    with torch.inference_mode():
        assert module(x, torch.full((4,), 0.5)).shape == x.shape


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(SourceError, match="not a ddpm-rt checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        load_checkpoint(tmp_path)

    ck = tmp_path / "ck"
    train("swissroll", ck, _cfg(10), progress=False, model_config=TINY["swissroll"])
    cfg = json.loads((ck / "config.json").read_text())
    # weights that do not fit the module named in config.json
    cfg["model_config"]["hidden"] = 48
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="do not match the module"):
        load_checkpoint(ck)
    cfg["model_config"]["hidden"] = 32
    (ck / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(ck / "model.safetensors"))
    weights.pop("out.bias")
    save_file(weights, str(ck / "model.safetensors"))
    with pytest.raises(SourceError, match="missing: out.bias"):
        load_checkpoint(ck)
    (ck / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SourceError, match="cannot read"):
        load_checkpoint(ck)
    cfg["kind"] = "cifar"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="unknown built-in model"):
        load_checkpoint(ck)


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ck"
    train_command("swissroll", out, steps=20, batch_size=16, lr=1e-3, seed=1, threads=None, json_out=True,
                  label_dropout=None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 20 and summary["kind"] == "swissroll" and summary["final_loss"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["command"].startswith("ddpm-rt train swissroll --out")
    with pytest.raises(SourceError, match="unknown built-in model"):
        train_command("cifar", out, steps=1, batch_size=1, lr=1e-3, seed=0, threads=None, json_out=True,
                      label_dropout=None)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        train_command("swissroll", tmp_path / "x", steps=0, batch_size=1, lr=1e-3, seed=0, threads=None, json_out=True,
                      label_dropout=None)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        train_command("swissroll", tmp_path / "x", steps=1, batch_size=1, lr=-1.0, seed=0, threads=None, json_out=True,
                      label_dropout=None)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        train_command("swissroll", f, steps=1, batch_size=1, lr=1e-3, seed=0, threads=None, json_out=True,
                      label_dropout=None)


def test_datasets_are_fixed_and_in_range() -> None:
    d = load_dataset("digits16")
    assert d.train.shape == (1437, 1, 16, 16) and d.heldout.shape == (360, 1, 16, 16)
    assert d.train.dtype == np.float32 and d.train.min() >= -1 and d.train.max() <= 1
    assert np.bincount(d.heldout_labels).min() >= 35  # stratified
    s = load_dataset("swissroll")
    assert s.train.shape == (10000, 2) and s.heldout.shape == (2000, 2)
    assert np.abs(s.train).max() < 1.2
    with pytest.raises(ConfigError, match="digits16, swissroll"):
        load_dataset("mnist")
