"""The host reverse loop: reference update, noise handling, buffer reuse, no per-step allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ddpm_rt.errors import ConfigError
from ddpm_rt.plan import SamplerSpec, SamplingPlan, build_plan
from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.schedule import ScheduleSpec

LINEAR = ScheduleSpec("linear")


def _model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A smooth stand-in denoiser that depends on both inputs (returns a fresh array)."""
    return np.tanh(x) * 0.5 + np.float32(1e-3) * t.reshape(-1, *([1] * (x.ndim - 1)))


def _reference(plan: SamplingPlan, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The plan's update written out plainly in float64 (module docstring of plan.py)."""
    x = x.astype(np.float64)
    for i in range(plan.steps):
        t = np.full(x.shape[0], plan.timesteps[i], dtype=np.float32)
        out = _model(x.astype(np.float32), t).astype(np.float64)
        new = plan.a[i] * x + plan.b[i] * out + plan.sigma[i] * noise[i]
        if plan.clip is not None:
            new += plan.p0[i] * np.clip(plan.cx[i] * x + plan.co[i] * out, *plan.clip)
        x = new
    return x


@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
@pytest.mark.parametrize("sampler", [SamplerSpec("ddpm", 20), SamplerSpec("ddim", 20, "trailing", eta=0.7)],
                         ids=["ddpm", "ddim"])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_loop_applies_the_plan_update(sampler: SamplerSpec, clip, pred: str, rng) -> None:
    plan = build_plan(LINEAR, pred, sampler, clip)
    x_T = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    noise = rng.standard_normal((plan.steps, *x_T.shape)).astype(np.float32)
    got = sample_loop(_model, plan, x_T, noise=noise)
    want = _reference(plan, x_T, noise)
    assert got.dtype == np.float32 and got.shape == x_T.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("sampler", [SamplerSpec("ddpm", 30), SamplerSpec("ddim", 30, eta=1.0)],
                         ids=["ddpm", "ddim"])
def test_caller_noise_reproduces_a_seeded_run(sampler: SamplerSpec) -> None:
    plan = build_plan(LINEAR, "epsilon", sampler)
    shape = (2, 1, 4, 4)
    rng = np.random.default_rng(7)
    x_T = initial_noise(shape, rng)
    seeded = sample_loop(_model, plan, x_T, rng=rng)

    # the same stream drawn up front: x_T first, then one row per step that adds noise
    rng = np.random.default_rng(7)
    x_T2 = initial_noise(shape, rng)
    noise = np.zeros((plan.steps, *shape), dtype=np.float32)
    for i in np.flatnonzero(plan.sigma > 0):
        noise[i] = rng.standard_normal(shape, dtype=np.float32)
    supplied = sample_loop(_model, plan, x_T2, noise=noise)

    np.testing.assert_array_equal(x_T, x_T2)
    np.testing.assert_array_equal(supplied, seeded)
    # and the noise matters: another seed gives another sample
    other = sample_loop(_model, plan, x_T, rng=np.random.default_rng(8))
    assert not np.allclose(other, seeded)


@pytest.mark.parametrize("bad", [(29, 2, 1, 4, 4), (30, 1, 1, 4, 4), (30, 2, 4, 4)])
def test_wrong_noise_shape_raises(bad: tuple[int, ...]) -> None:
    plan = build_plan(LINEAR, "epsilon", SamplerSpec("ddpm", 30))
    with pytest.raises(ConfigError, match=r"per-step noise must have shape \(30, 2, 1, 4, 4\)"):
        sample_loop(_model, plan, np.zeros((2, 1, 4, 4), np.float32), noise=np.zeros(bad, np.float32))


def test_deterministic_plan_needs_no_rng_and_ignores_noise() -> None:
    plan = build_plan(LINEAR, "v_prediction", SamplerSpec("ddim", 10))
    x_T = np.linspace(-2, 2, 16, dtype=np.float32).reshape(1, 16)
    a = sample_loop(_model, plan, x_T)
    b = sample_loop(_model, plan, x_T, noise=np.full((10, 1, 16), 1e6, np.float32))
    np.testing.assert_array_equal(a, b)


def test_loop_leaves_input_alone_and_reports_progress(rng) -> None:
    plan = build_plan(LINEAR, "epsilon", SamplerSpec("ddim", 5))
    x_T = rng.standard_normal((3, 2)).astype(np.float64)  # any float dtype is accepted
    before = x_T.copy()
    seen_t: list[np.ndarray] = []
    calls: list[tuple[int, int]] = []

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.shape == (3, 2) and t.dtype == np.float32 and t.shape == (3,)
        seen_t.append(t.copy())
        return np.zeros_like(x)

    out = sample_loop(model, plan, x_T, progress=lambda i, n: calls.append((i, n)))
    np.testing.assert_array_equal(x_T, before)
    assert out is not x_T and out.dtype == np.float32
    assert calls == [(i, 5) for i in range(1, 6)]
    np.testing.assert_array_equal(np.stack(seen_t), np.repeat(plan.timesteps[:, None], 3, axis=1))


def test_model_may_reuse_or_alias_its_buffers(rng) -> None:
    """A model returning one reused buffer, or x itself, gives the same result as fresh outputs."""
    plan = build_plan(LINEAR, "sample", SamplerSpec("ddpm", 15), clip=(-1.0, 1.0))
    x_T = rng.standard_normal((2, 8)).astype(np.float32)
    noise = rng.standard_normal((15, 2, 8)).astype(np.float32)
    buf = np.empty_like(x_T)

    def reused(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        np.tanh(x, out=buf)
        return buf

    def identity(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return x  # the loop's own x buffer comes back as the output

    fresh = sample_loop(lambda x, t: np.tanh(x), plan, x_T, noise=noise)
    np.testing.assert_array_equal(sample_loop(reused, plan, x_T, noise=noise), fresh)
    copied = sample_loop(lambda x, t: x.copy(), plan, x_T, noise=noise)
    np.testing.assert_array_equal(sample_loop(identity, plan, x_T, noise=noise), copied)


def test_clip_bounds_the_predicted_sample() -> None:
    # one ddim step with a 'sample' model that predicts 5: x0^ is clipped to 1 before use
    plan = build_plan(LINEAR, "sample", SamplerSpec("ddim", 1, "trailing"), clip=(-1.0, 1.0))
    x = np.zeros((1, 4), np.float32)
    got = sample_loop(lambda x, t: np.full_like(x, 5.0), plan, x)
    np.testing.assert_allclose(got, 1.0, rtol=1e-6)  # abar' = 1: x_prev = x0^ = clip(5) = 1


def _peak_loop_memory(steps: int, stochastic: bool) -> int:
    """Peak bytes traced while `sample_loop` runs a plan of `steps` on a [4, 1, 16, 16] x."""
    schedule = ScheduleSpec("cosine")
    sampler = SamplerSpec("ddpm", steps) if stochastic else SamplerSpec("ddim", steps)
    plan = build_plan(schedule, "epsilon", sampler, clip=(-1.0, 1.0))
    x_T = np.ones((4, 1, 16, 16), np.float32)
    buf = np.full_like(x_T, 0.1)
    rng = np.random.default_rng(0)

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return buf  # preallocated: the loop alone is measured

    sample_loop(model, plan, x_T, rng=rng)  # warm numpy's and the generator's one-time caches
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sample_loop(model, plan, x_T, rng=rng)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize("stochastic", [True, False], ids=["ddpm", "ddim"])
def test_loop_allocates_nothing_per_step(stochastic: bool) -> None:
    short = _peak_loop_memory(10, stochastic)
    long = _peak_loop_memory(1000, stochastic)
    sample = 4 * 1 * 16 * 16 * 4  # bytes of one float32 [4, 1, 16, 16] buffer
    # numpy's buffers are traced: the running x, z, tmp and x0 (clip) are there, once each
    assert 4 * sample <= short < 5 * sample, f"{short} bytes is not 4 sample buffers + a little"
    assert abs(long - short) < 512, f"peak went from {short} to {long} bytes over 990 more steps"


# --- multistep plans: history ring ------------------------------------------------------


def _reference_with_history(plan: SamplingPlan, x: np.ndarray) -> np.ndarray:
    """plan.py's multistep update in float64, with the past d's in a plain list."""
    x = x.astype(np.float64)
    ds: list[np.ndarray] = []
    for i in range(plan.steps):
        t = np.full(x.shape[0], plan.timesteps[i], dtype=np.float32)
        out = _model(x.astype(np.float32), t).astype(np.float64)
        d = plan.cx[i] * x + plan.co[i] * out
        if plan.clip is not None:
            d = np.clip(d, *plan.clip)
        new = plan.a[i] * x + plan.b[i] * out + plan.p0[i] * d
        for j in range(1, plan.depth + 1):
            if i - j >= 0:
                new += plan.hist[i, j - 1] * ds[i - j]
        ds.append(d)
        x = new
    return x


@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-3m", "unipc", "ipndm"])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_loop_applies_the_history_update(sampler: str, pred: str, clip, rng) -> None:
    if clip is not None and sampler == "ipndm":
        pytest.skip("ipndm refuses clip")
    plan = build_plan(LINEAR, pred, SamplerSpec(sampler, 12, "trailing"), clip)
    x_T = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = sample_loop(_model, plan, x_T)
    want = _reference_with_history(plan, x_T)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # and the history matters: dropping it changes the result
    from dataclasses import replace

    no_hist = replace(plan, hist=np.zeros_like(plan.hist))
    assert not np.allclose(sample_loop(_model, no_hist, x_T), got, atol=1e-3)


def _peak_multistep_memory(sampler: str, steps: int) -> int:
    schedule = ScheduleSpec("cosine")
    plan = build_plan(schedule, "epsilon", SamplerSpec(sampler, steps, "trailing"))
    x_T = np.ones((4, 1, 16, 16), np.float32)
    buf = np.full_like(x_T, 0.1)
    sample_loop(lambda x, t: buf, plan, x_T)  # warm caches (and plan.ring_slots, made once)
    peaks = []
    for _ in range(3):  # tracemalloc sees every thread: the least of three ignores another thread's blip
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            sample_loop(lambda x, t: buf, plan, x_T)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        finally:
            tracemalloc.stop()
    return min(peaks)  # one [4, 1, 16, 16] array per step would add 4 KiB x 990 steps


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-3m", "unipc", "ipndm"])
def test_history_loop_allocates_nothing_per_step(sampler: str) -> None:
    short = _peak_multistep_memory(sampler, 10)
    long = _peak_multistep_memory(sampler, 1000)
    assert abs(long - short) < 512, f"{sampler}: peak went from {short} to {long} bytes over 990 more steps"
