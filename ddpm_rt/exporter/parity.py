"""Verification of an exported graph: onnx.checker, then ONNX Runtime against eager PyTorch.

Errors are reported as

    max_abs = max |ort - torch|
    max_rel = max_abs / max |torch|      (relative to the output's scale, not per element,
                                          so outputs near zero do not blow it up)

for single calls (batch 1 and a larger batch, at the early / middle / late timesteps of the
model's own sampling plan) and for a whole sampling trajectory with the same noise.

A conditional model's inputs are drawn over their range at every call: class labels from
0..num_classes-1 with the null label among them (the unconditional half of CFG is verified too),
tensors uniform over their declared range with one sample at the null fill value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import ExportError, first_line
from ddpm_rt.multistep import MULTISTEP
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.spec import DiffusionSpec

if TYPE_CHECKING:
    import torch

ModelFn = Callable[..., np.ndarray]  # (x, t, *cond) -> out
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
TRAJECTORY_STEPS = 50


def check_graph(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejected {path.name}: {first_line(e)}") from None


class OrtModel:
    """An ONNX Runtime CPU session as a ``(x, t, *cond) -> out`` callable."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise ExportError(f"ONNX Runtime cannot load {path.name}: {first_line(e)}") from None
        self.names = [i.name for i in self.session.get_inputs()]  # x, t, *conditioning (contract order)

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.names, (x, t, *cond), strict=True)))[0]


class TorchModel:
    """An eager fp32 module as a ``(x, t, *cond) -> out`` callable on numpy arrays."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module.eval()

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            args = (torch.from_numpy(a) for a in (x, t, *cond))
            return self.module(*args).float().numpy()


def draw_conditioning(inputs: tuple[CondInput, ...], batch: int, rng: np.random.Generator,
                      with_null: bool = True) -> list[np.ndarray]:
    """One array per input, [batch, ...], drawn over its range; the last sample null when `with_null`."""
    out = []
    for c in inputs:
        if c.kind == "class":
            assert c.num_classes is not None
            v = rng.integers(0, c.num_classes, batch).astype(np.int64)
        else:
            lo, hi = c.range or (-1.0, 1.0)
            v = rng.uniform(lo, hi, (batch, *c.shape)).astype(np.float32)
        if with_null and c.null is not None:
            v[-1] = c.null
        out.append(v)
    return out


def _describe(inputs: tuple[CondInput, ...], values: list[np.ndarray]) -> dict[str, Any]:
    return {c.name: v.tolist() for c, v in zip(inputs, values, strict=True) if c.kind == "class"}


def _errors(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    if got.shape != ref.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from the PyTorch output shape {ref.shape}")
    finite = {"eager": bool(np.all(np.isfinite(ref))), "onnx": bool(np.all(np.isfinite(got)))}
    if not all(finite.values()):  # say so instead of an inf/NaN "difference"
        return {"max_abs": float("inf"), "max_rel": float("inf"), "rms": float("inf"), "finite": finite}
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-12),
            "rms": float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0, "finite": finite}


def verification_plan(spec: DiffusionSpec, steps: int = TRAJECTORY_STEPS) -> SamplingPlan:
    """The model's default sampler at up to `steps` steps (interp models need exactly T)."""
    T = spec.schedule.num_train_timesteps
    n = None if spec.schedule.family == "interp" else min(steps, T)
    sampler = spec.sampler(n)
    if sampler.sampler in MULTISTEP:  # a graph check, not a solver check: DDIM takes any step count
        sampler = spec.sampler(n, sampler="ddim")
    return spec.plan(sampler)


def probe_timesteps(spec: DiffusionSpec) -> list[float]:
    """Early, middle and late model `t` values from the model's own sampling plan."""
    ts = verification_plan(spec).timesteps
    picks = [float(ts[0]), float(ts[len(ts) // 2]), float(ts[-1])]
    return list(dict.fromkeys(picks))


def call_parity(
    reference: ModelFn, candidate: ModelFn, spec: DiffusionSpec, batches: tuple[int, ...], seed: int = 0
) -> dict[str, Any]:
    """Single-call errors at each batch size and probe timestep; worst case on top.

    Conditioning inputs are drawn per call (`draw_conditioning`); at batch 1, calls alternate
    between a label and the null so both are seen at every batch size.
    """
    rng = np.random.default_rng(seed)
    calls = []
    k = 0
    for batch in batches:
        for t_value in probe_timesteps(spec):
            x = initial_noise((batch, *spec.sample_shape), rng)
            t = np.full((batch,), t_value, dtype=np.float32)
            cond = draw_conditioning(spec.conditioning, batch, rng, with_null=batch > 1 or k % 2 == 1)
            k += 1
            err = _errors(candidate(x, t, *cond), reference(x, t, *cond))
            call = {"batch": batch, "t": t_value, "max_abs": err["max_abs"], "max_rel": err["max_rel"],
                    "finite": err["finite"]}
            if cond:
                call["cond"] = _describe(spec.conditioning, cond)
            calls.append(call)
    return {
        "max_abs": max(c["max_abs"] for c in calls),
        "max_rel": max(c["max_rel"] for c in calls),
        "calls": calls,
    }


def trajectory_parity(
    reference: ModelFn, candidate: ModelFn, spec: DiffusionSpec, steps: int = TRAJECTORY_STEPS,
    batch: int = 2, seed: int = 0,
) -> dict[str, Any]:
    """Final-sample error of a whole sampling run (same initial and per-step noise) vs `reference`.

    A conditional model runs conditioned on labels drawn once (the last sample's null at batch > 1).
    """
    plan = verification_plan(spec, steps)
    rng = np.random.default_rng(seed)
    x_init = initial_noise((batch, *spec.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, batch, *spec.sample_shape), dtype=np.float32)
    cond = draw_conditioning(spec.conditioning, batch, rng, with_null=batch > 1)
    ref = sample_loop(lambda x, t: reference(x, t, *cond), plan, x_init, noise=noise)
    got = sample_loop(lambda x, t: candidate(x, t, *cond), plan, x_init, noise=noise)
    extra = {"cond": _describe(spec.conditioning, cond)} if cond else {}
    return {"sampler": plan.sampler.sampler, "steps": plan.steps, "batch": batch, **extra, **_errors(got, ref)}


def check_tolerance(figures: dict[str, Any], tolerance: float, what: str) -> None:
    for c in figures["calls"]:
        bad = [k for k, ok in c.get("finite", {}).items() if not ok]
        if bad:
            raise ExportError(
                f"the {' and the '.join(bad)} output is not finite (NaN or inf) at batch {c['batch']}, "
                f"t={c['t']:g}: the model itself produces non-finite values; fix the model or its weights"
                if "eager" in bad else
                f"{what} produces non-finite values (NaN or inf) at batch {c['batch']}, t={c['t']:g} where "
                "eager PyTorch does not; check for an op that overflows in the graph"
            )
    if not figures["max_abs"] <= tolerance:  # also catches NaN
        worst = max(figures["calls"], key=lambda c: c["max_abs"])
        raise ExportError(
            f"{what} differs from eager PyTorch by max-abs {figures['max_abs']:.3g} "
            f"(batch {worst['batch']}, t={worst['t']:g}) > tolerance {tolerance:g}; "
            "check the model for data-dependent control flow, or raise --tolerance"
        )
