"""One small trainer for every built-in kind: the loss of its schedule family, Adam, EMA
weights, a progress bar and resumable safetensors checkpoints.

Losses (x0 a data batch, z ~ N(0, I)):

* vp (seed 001/002/003, L_simple): t ~ U{0..T-1}, x_t = sqrt(abar_t)·x0 + sqrt(1-abar_t)·z,
  loss = |z - f(x_t, t)|² (epsilon prediction).
* interp (seed 000): k ~ U{0..T-1}, one noise n for both levels a_k and a_{k+1}:
  x_k = x0·(1-a_k) + n·a_k, target x_{k+1}; loss = |x_{k+1} - f(x_k, k)| (MAE, as the seed).
* alpha_power (seed 004): n ~ U(0, n_max] (continuous, so respaced levels alpha'^n' are covered),
  A_n = alpha^n·x0 + (1-alpha^n)·N, loss = |N - f(A_n, alpha^n)|².

A class-conditional model (its spec declares a class input) gets the batch's labels as a third
argument, each replaced by the null id with probability `label_dropout` (Ho & Salimans 2022,
p_uncond), so one network learns f(x, t, y) and f(x, t, ∅) — both halves of classifier-free guidance.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpm_rt import weights
from ddpm_rt.datasets import load_dataset
from ddpm_rt.errors import ConfigError, Interrupted
from ddpm_rt.fsutil import signals_deferred
from ddpm_rt.schedule import forward_coefficients, interp_levels
from ddpm_rt.spec import DiffusionSpec
from ddpm_rt.train import checkpoint as ck


def machine() -> str:
    """CPU model, visible cores and OS, for checkpoint configs and model cards."""
    from ddpm_rt.machine import cpu_model

    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.machine()}"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; `steps` is the total step count (a resumed run continues to it)."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    ema_decay: float = 0.999
    warmup: int = 200  # linear lr warm-up steps, then cosine decay to 10% at `steps`
    grad_clip: float = 1.0
    log_every: int = 100
    checkpoint_every: int = 500
    label_dropout: float = 0.0  # conditional models: P(label -> null) per sample (p_uncond)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")


@dataclass
class TrainResult:
    out: Path
    step: int
    start_step: int
    wall_s: float
    history: list[list[float]] = field(default_factory=list)  # [step, mean loss over the last window]

    @property
    def final_loss(self) -> float | None:
        return self.history[-1][1] if self.history else None


class DiffusionLoss:
    """The training loss of one DiffusionSpec, with its schedule tables as float32 tensors."""

    def __init__(self, spec: DiffusionSpec) -> None:
        self.spec = spec
        sched = spec.schedule
        self.family = sched.family
        self.T = sched.num_train_timesteps
        if self.family == "vp":
            sig, noi = forward_coefficients(sched, np.arange(self.T))
            self.signal = torch.tensor(sig, dtype=torch.float32)
            self.noise = torch.tensor(noi, dtype=torch.float32)
            if spec.prediction_type != "epsilon":
                raise ConfigError("the trainer supports epsilon prediction for vp schedules")
        elif self.family == "interp":
            self.levels = torch.tensor(interp_levels(sched), dtype=torch.float32)  # (T+1,)
        else:
            self.log_alpha = math.log(sched.alpha)

    def __call__(self, model: torch.nn.Module, x0: Tensor, gen: torch.Generator,
                 cond: tuple[Tensor, ...] = ()) -> Tensor:
        b = x0.shape[0]
        shape = (b,) + (1,) * (x0.dim() - 1)  # broadcast per-sample scalars over x
        z = torch.randn(x0.shape, generator=gen)
        if self.family == "vp":
            t = torch.randint(0, self.T, (b,), generator=gen)
            x_t = self.signal[t].view(shape) * x0 + self.noise[t].view(shape) * z
            return torch.mean((model(x_t, t.float(), *cond) - z) ** 2)
        if self.family == "interp":
            k = torch.randint(0, self.T, (b,), generator=gen)
            a, a_next = self.levels[k].view(shape), self.levels[k + 1].view(shape)
            x_k = x0 * (1 - a) + z * a
            x_next = x0 * (1 - a_next) + z * a_next
            return torch.mean(torch.abs(model(x_k, k.float(), *cond) - x_next))
        n = (1.0 - torch.rand(b, generator=gen)) * self.T  # U(0, n_max]
        level = torch.exp(n * self.log_alpha)  # alpha^n, (B,)
        a_n = level.view(shape) * x0 + (1 - level.view(shape)) * z
        return torch.mean((model(a_n, level, *cond) - z) ** 2)


def _class_labels(spec: DiffusionSpec, labels: np.ndarray | None, cfg: TrainConfig, kind: str) -> Tensor | None:
    """The training labels of a class-conditional spec (None for an unconditional one)."""
    if not spec.conditioning:
        return None
    if len(spec.conditioning) != 1 or spec.conditioning[0].kind != "class":
        raise ConfigError(f"{kind}: the trainer supports one class-label conditioning input, "
                          f"not {[c.describe() for c in spec.conditioning]}")
    cond = spec.conditioning[0]
    if labels is None:
        raise ConfigError(f"{kind} is class-conditional but its dataset has no labels")
    if cond.null is not None and cfg.label_dropout == 0.0:
        raise ConfigError(f"{kind} declares null label {int(cond.null)} but label_dropout is 0, so the null "
                          "would never be trained; give --label-dropout (e.g. 0.15)")
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


def _drop_labels(y: Tensor, null: float | None, p: float, gen: torch.Generator) -> Tensor:
    """Each label replaced by the null id with probability p (classifier-free guidance training)."""
    if null is None or p == 0.0:
        return y
    drop = torch.rand(y.shape, generator=gen) < p  # (B,)
    return torch.where(drop, torch.full_like(y, int(null)), y)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, p in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(p)


class _Progress:
    """tqdm on stderr when available, else a plain line every `log_every` steps."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, file=sys.stderr, unit="step",
                                dynamic_ncols=True, mininterval=1.0)
            except ImportError:
                pass

    def update(self, step: int, total: int, loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled and loss is not None:
            print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    kind: str,
    out: Path | str,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    command: str | None = None,
    model_config: dict[str, Any] | None = None,
    on_log: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train built-in `kind` into checkpoint dir `out`, resuming if it already holds one of `kind`."""
    from ddpm_rt.models.catalog import get_builtin

    builtin = get_builtin(kind)
    out = Path(out)
    dataset = load_dataset(builtin.dataset)
    data = torch.from_numpy(np.ascontiguousarray(dataset.train))
    labels = _class_labels(builtin.spec, dataset.train_labels, cfg, kind)  # None: unconditional
    null = builtin.spec.conditioning[0].null if labels is not None else None
    loss_fn = DiffusionLoss(builtin.spec)

    torch.manual_seed(cfg.seed)  # parameter init
    start_step, history, wall_before = 0, [], 0.0
    resume = (out / ck.CONFIG_FILE).is_file()
    if resume:
        prev = ck.read_config(out)
        if prev["kind"] != kind:
            raise ConfigError(f"{out} holds a {prev['kind']!r} checkpoint, not {kind!r}; pick another --out")
        model_config = prev["model_config"]
    model_config = {**builtin.config, **(model_config or {})}
    model = builtin.build(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ema = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    if resume:
        state = weights.read_tensors(out / ck.STATE_FILE)
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        weights.load_weights(ema, out / ck.MODEL_FILE)
        ck.restore_optimizer(opt, state)
        if "rng.torch" in state:
            gen.set_state(state["rng.torch"])
        start_step = int(prev["step"])
        history = [list(h) for h in prev.get("loss_history", [])]
        wall_before = float(prev.get("wall_s", 0.0))
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)

    def save(step: int, wall: float) -> None:
        with signals_deferred():  # the three files describe one step: a Ctrl-C waits for all of them
            _save(step, wall)

    def _save(step: int, wall: float) -> None:
        weights.save_tensors(ema.state_dict(), out / ck.MODEL_FILE)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors |= ck.optimizer_tensors(opt)
        tensors["rng.torch"] = gen.get_state()
        weights.save_tensors(tensors, out / ck.STATE_FILE)
        weights.save_json({
            "format": ck.FORMAT,
            "format_version": ck.FORMAT_VERSION,
            "kind": kind,
            "dataset": builtin.dataset,
            "model_config": model_config,
            "spec": builtin.spec.to_dict(),
            "step": step,
            "train": asdict(cfg),
            "wall_s": round(wall, 2),
            "final_loss": history[-1][1] if history else None,
            "loss_history": history,
            "threads": torch.get_num_threads(),
            "machine": machine(),
            "torch_version": torch.__version__,
            "command": command,
        }, out / ck.CONFIG_FILE)

    t0 = time.perf_counter()
    bar = _Progress(cfg.steps, start_step, progress)
    window: list[float] = []
    model.train()
    step = start_step
    try:
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen)
            cond = () if labels is None else (_drop_labels(labels[idx], null, cfg.label_dropout, gen),)
            loss = loss_fn(model, data[idx], gen, cond)
            if not torch.isfinite(loss):
                raise ConfigError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
            _ema_update(ema, model, decay)
            step += 1
            window.append(loss.item())
            logged = None
            if step % cfg.log_every == 0 or step == cfg.steps:
                logged = float(np.mean(window))
                history.append([step, round(logged, 6)])
                window = []
                if on_log is not None:
                    on_log(step, logged)
            bar.update(step, cfg.steps, logged)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save(step, wall_before + time.perf_counter() - t0)
    except Interrupted as e:
        bar.close()
        if step > start_step:
            save(step, wall_before + time.perf_counter() - t0)
            e.note = f"saved a checkpoint at step {step} in {out}; run the same command to resume from there"
        else:
            e.note = f"nothing to save (no step done since {'step ' + str(start_step) if resume else 'the start'})"
        raise
    finally:
        bar.close()
    wall = wall_before + time.perf_counter() - t0
    if step > start_step or not resume:
        save(step, wall)
    return TrainResult(out, step, start_step, wall, history)
