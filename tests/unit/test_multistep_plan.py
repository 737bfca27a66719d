"""Multistep plans: table shapes, history representation, orders, ring slots, head()."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_rt.errors import ConfigError
from ddpm_rt.multistep import HISTORY, MULTISTEP, orders
from ddpm_rt.plan import SAMPLERS_FOR_FAMILY, SamplerSpec, build_plan
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.schedule import ScheduleSpec, alphas_cumprod, respace_multistep

LINEAR = ScheduleSpec("linear")


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("clip", [None, (-1.0, 1.0)])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 14, 15, 50])
@pytest.mark.parametrize("sampler", MULTISTEP)
def test_tables_shapes_and_history(sampler: str, steps: int, clip, karras: bool) -> None:
    if clip is not None and sampler == "ipndm":
        pytest.skip("ipndm refuses clip (test_multistep_parity)")
    plan = build_plan(LINEAR, "v_prediction", SamplerSpec(sampler, steps, "trailing", karras_sigmas=karras), clip)
    H = HISTORY[sampler]
    assert plan.table().shape == (steps, 7) and plan.table().dtype == np.float32
    assert plan.hist.shape == (steps, H) and plan.hist.dtype == np.float32 and plan.depth == H
    assert plan.converts and not plan.stochastic and np.all(plan.sigma == 0)
    assert np.all(np.isfinite(plan.hist))
    # no weight on an output from before step 0
    i, j = np.arange(steps)[:, None], np.arange(1, H + 1)[None, :]
    assert np.all(plan.hist[j > i] == 0)
    # without clip, d_i's own weight is folded into a and b; with clip it is p0
    assert np.all(plan.p0 == 0) if clip is None else np.all(plan.b == 0)
    assert plan.ring_slots.shape == (steps, H + 1)
    np.testing.assert_array_equal(plan.ring_slots[:, 0], np.arange(steps) % (H + 1))
    # within a step, the H + 1 live outputs sit in distinct slots
    assert all(len(set(row)) == H + 1 for row in plan.ring_slots.tolist())


def test_single_step_samplers_have_no_history() -> None:
    plan = build_plan(LINEAR, "epsilon", SamplerSpec("ddim", 10))
    assert plan.hist.shape == (10, 0) and not plan.converts
    assert build_plan(LINEAR, "epsilon", SamplerSpec("ddim", 10), (-1.0, 1.0)).converts


def test_orders_warm_up_and_lower_at_the_end() -> None:
    np.testing.assert_array_equal(orders("dpmpp-3m", 6, True), [1, 2, 3, 3, 2, 1])
    np.testing.assert_array_equal(orders("dpmpp-3m", 6, False), [1, 2, 3, 3, 3, 1])
    np.testing.assert_array_equal(orders("dpmpp-3m", 16, True)[-3:], [3, 3, 1])  # N >= 15
    np.testing.assert_array_equal(orders("unipc", 4, True), [1, 2, 2, 1])
    np.testing.assert_array_equal(orders("ipndm", 6, True), [1, 2, 3, 4, 4, 4])


def test_multistep_samplers_drive_vp_only() -> None:
    assert set(MULTISTEP) <= set(SAMPLERS_FOR_FAMILY["vp"])
    with pytest.raises(ConfigError, match="does not fit"):
        build_plan(ScheduleSpec("interp", num_train_timesteps=10), "next_sample", SamplerSpec("dpmpp-2m", 10))


def test_respace_multistep_drops_the_extra_point() -> None:
    np.testing.assert_array_equal(respace_multistep(1000, 4, "linspace"), [999, 749, 500, 250])
    np.testing.assert_array_equal(respace_multistep(1000, 4, "leading"), [800, 600, 400, 200])
    np.testing.assert_array_equal(respace_multistep(1000, 4, "trailing"), [999, 749, 499, 249])
    with pytest.raises(ConfigError, match="steps_offset=500 pushes"):
        respace_multistep(1000, 4, "leading", 500)


@pytest.mark.parametrize("sampler", MULTISTEP)
def test_head_keeps_history_and_runs_the_first_steps(sampler: str, rng) -> None:
    plan = build_plan(LINEAR, "epsilon", SamplerSpec(sampler, 12, "trailing"))
    head = plan.head(5)
    np.testing.assert_array_equal(head.hist, plan.hist[:5])
    np.testing.assert_array_equal(head.ring_slots, plan.ring_slots[:5])
    x_T = rng.standard_normal((2, 6)).astype(np.float32)
    xs: list[np.ndarray] = []

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        xs.append(x.copy())
        return np.tanh(x)

    sample_loop(model, plan, x_T)
    np.testing.assert_array_equal(sample_loop(lambda x, t: np.tanh(x), head, x_T), xs[5])


def test_multistep_solvers_beat_ddim_on_gaussian_data() -> None:
    """With the exact denoiser of N(0, c²) data the probability-flow ODE keeps x_t/sqrt(var_t)
    constant, so x_0 = c·x_T/sqrt(var_T). At 20 steps every multistep solver must land at least
    twice as close as DDIM (a check of the math independent of diffusers)."""
    c = 0.5
    acs = alphas_cumprod(LINEAR)

    def eps_model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        ac = acs[t.astype(np.int64)].reshape(-1, 1)
        return (np.sqrt(1 - ac) * x / (ac * c**2 + 1 - ac)).astype(np.float32)  # E[eps | x_t]

    x_T = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)

    def error(sampler: str, steps: int) -> float:
        plan = build_plan(LINEAR, "epsilon", SamplerSpec(sampler, steps, "trailing"))
        ac = acs[plan.train_timesteps[0]]
        return float(np.abs(sample_loop(eps_model, plan, x_T) - x_T * c / np.sqrt(ac * c**2 + 1 - ac)).max())

    ddim = error("ddim", 20)
    for sampler in MULTISTEP:
        assert error(sampler, 20) < 0.5 * ddim, sampler
        assert error(sampler, 50) < error(sampler, 10), sampler
