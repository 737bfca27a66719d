"""Training the noise-aware digits classifier (`models.noisy_classifier`) for classifier guidance.

Each step draws clean digits16 training images x0 (shifted by ±1 pixel at random), a train index
t uniform in 0..T-1 and noise ε, and fits p(y | x_t, t) with cross-entropy on

    x_t = sqrt(abar_t)·x0 + sqrt(1 − abar_t)·ε          the `digits` built-in's schedule
                                                          (linear betas 1e-4..0.02, T = 1000)

Run: ``python -m ddpm_rt.train.noisy_classifier [--steps N] [--out DIR]`` (one progress line per
--log-every steps; the weights ship as float16 safetensors + config.json, written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_rt.models.catalog import BUILTIN
from ddpm_rt.models.noisy_classifier import (
    ASSET_DIR,
    CONFIG_FILE,
    WEIGHTS_FILE,
    NoisyDigitsClassifier,
)
from ddpm_rt.schedule import ScheduleSpec, forward_coefficients

EVAL_TIMESTEPS = (0, 250, 500, 750, 999)
SCHEDULE_OF = "digits"  # the built-in whose noise schedule the classifier is trained on


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random ±1 pixel translation per batch (pads with the background value -1)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def _coefficients(schedule: ScheduleSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(signal, noise) float32 [T]: x_t = signal[t]·x0 + noise[t]·ε."""
    signal, noise = forward_coefficients(schedule, np.arange(schedule.num_train_timesteps))
    return torch.from_numpy(signal.astype(np.float32)), torch.from_numpy(noise.astype(np.float32))


def accuracy_vs_t(model: torch.nn.Module, x0: np.ndarray, labels: np.ndarray, schedule: ScheduleSpec,
                  timesteps: tuple[int, ...] = EVAL_TIMESTEPS, repeats: int = 4, seed: int = 1234) -> dict[str, float]:
    """Accuracy on `x0` noised to each of `timesteps` (`repeats` noise draws per image, fixed seed)."""
    signal, noise = _coefficients(schedule)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(x0).repeat(repeats, 1, 1, 1)
    y = torch.from_numpy(labels).repeat(repeats)
    out = {}
    model.eval()
    with torch.inference_mode():
        for t in timesteps:
            eps = torch.randn(x.shape, generator=gen)
            xt = signal[t] * x + noise[t] * eps
            pred = model(xt, torch.full((x.shape[0],), float(t))).argmax(1)
            out[str(t)] = round(float((pred == y).float().mean()), 4)
    return out


def train(steps: int = 6000, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
          log_every: int = 250, log: Any = print) -> tuple[NoisyDigitsClassifier, dict[str, Any]]:
    """Train on the digits16 training split; returns the model and its record (accuracy vs t on held-out)."""
    from ddpm_rt.datasets import load_dataset

    ds = load_dataset("digits16")
    assert ds.train_labels is not None and ds.heldout_labels is not None
    schedule = BUILTIN[SCHEDULE_OF].spec.schedule
    signal, noise = _coefficients(schedule)
    T = schedule.num_train_timesteps
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(ds.train), torch.from_numpy(ds.train_labels)
    model = NoisyDigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=max(0.05, 4 / steps))
    start, running = time.perf_counter(), 0.0
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        t = torch.randint(0, T, (batch_size,), generator=gen)
        eps = torch.randn((batch_size, *x.shape[1:]), generator=gen)
        xt = signal[t][:, None, None, None] * _shift(x[idx], gen) + noise[t][:, None, None, None] * eps
        loss = F.cross_entropy(model(xt, t.float()), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            log(f"step {step}/{steps}  loss {running / n:.4f}  {time.perf_counter() - start:.0f}s")
            running = 0.0
    # evaluate what ships: the weights rounded to float16 (and run in float32)
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    acc = accuracy_vs_t(model, ds.heldout, ds.heldout_labels, schedule)
    info = {
        "trained_on": f"digits16 train split ({len(x)} images, ±1 px shifts), noised with the "
                      f"{SCHEDULE_OF!r} built-in's schedule at t uniform in 0..{T - 1}",
        "schedule": {"of": SCHEDULE_OF, "kind": schedule.kind, "num_train_timesteps": T,
                     "beta_start": schedule.beta_start, "beta_end": schedule.beta_end},
        "timestep_meaning": "train_index",
        "heldout_accuracy_vs_t": acc,
        "heldout": f"digits16 held-out split ({len(ds.heldout)} images x 4 noise draws per t)",
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_seconds": round(time.perf_counter() - start, 1),
        "weights": "float16 safetensors (trained and verified in float32)",
    }
    return model.eval(), info


def save(model: NoisyDigitsClassifier, info: dict[str, Any], out: Path = ASSET_DIR) -> None:
    """float16 safetensors + config.json (constructor config and training record), each written atomically."""
    from ddpm_rt.weights import save_json, save_tensors

    save_tensors({k: v.half() for k, v in model.state_dict().items()}, Path(out) / WEIGHTS_FILE)
    save_json({"config": model.config, **info}, Path(out) / CONFIG_FILE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ddpm_rt.train.noisy_classifier", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--out", type=Path, default=ASSET_DIR)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, info = train(a.steps, a.batch_size, a.lr, a.seed, a.log_every,
                        log=lambda line: print(line, flush=True))
    save(model, info, a.out)
    print(json.dumps(info["heldout_accuracy_vs_t"]), f"-> {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
