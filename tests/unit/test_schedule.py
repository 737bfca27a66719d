"""Noise schedules and respacing against their closed forms (numpy only)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ddpm_rt.errors import ConfigError
from ddpm_rt.schedule import (
    KINDS,
    SPACINGS,
    ScheduleSpec,
    alphas_cumprod,
    check_steps,
    forward_coefficients,
    make_betas,
    respace,
    respaced_betas,
)

T = 1000


# --- betas -------------------------------------------------------------------------------


def test_linear_betas_are_ddpm_linspace() -> None:
    betas = make_betas(ScheduleSpec("linear"))
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / (T - 1), rtol=1e-9)


def test_scaled_linear_betas_are_linear_in_sqrt() -> None:
    spec = ScheduleSpec("scaled_linear", beta_start=0.00085, beta_end=0.012)
    betas = make_betas(spec)
    assert betas[0] == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1] == pytest.approx(0.012, rel=1e-12)
    root = np.sqrt(betas)
    np.testing.assert_allclose(np.diff(root), (0.012**0.5 - 0.00085**0.5) / (T - 1), rtol=1e-9)


def _cosine_abar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
    # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2)
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("steps", [10, 1000, 4000])
def test_cosine_betas_follow_nichol_dhariwal(steps: int) -> None:
    betas = make_betas(ScheduleSpec("cosine", num_train_timesteps=steps))
    u = np.arange(steps + 1) / steps
    abar = _cosine_abar(u)
    expected = np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)  # beta_t = 1 - abar(t+1)/abar(t), capped
    np.testing.assert_allclose(betas, expected, rtol=1e-12, atol=1e-15)
    # abar_t = prod (1 - beta) telescopes to abar((t+1)/T) wherever the cap is inactive
    uncapped = expected < 0.999
    np.testing.assert_allclose(alphas_cumprod(ScheduleSpec("cosine", num_train_timesteps=steps))[uncapped],
                               abar[1:][uncapped], rtol=1e-9)
    assert betas.max() <= 0.999 and betas[-1] == pytest.approx(0.999)  # the singularity at t = T is capped


def test_cosine_cap_is_a_parameter() -> None:
    betas = make_betas(ScheduleSpec("cosine", max_beta=0.5))
    assert betas.max() == 0.5


def test_explicit_betas_are_used_as_given() -> None:
    given = tuple(np.linspace(0.001, 0.2, 8))
    spec = ScheduleSpec("betas", num_train_timesteps=8, betas=given)
    np.testing.assert_array_equal(make_betas(spec), np.array(given))
    np.testing.assert_allclose(alphas_cumprod(spec), np.cumprod(1.0 - np.array(given)), rtol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "quadratic"}, "choose one of linear, scaled_linear, cosine, betas, interp, alpha_power"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be >= 1"),
        ({"kind": "betas", "num_train_timesteps": 3, "betas": (0.1, 0.2)}, "exactly num_train_timesteps"),
        ({"kind": "betas", "num_train_timesteps": 3}, "got 0 for T=3"),
        ({"kind": "betas", "num_train_timesteps": 2, "betas": (0.1, 1.0)}, r"lie in \(0, 1\)"),
        ({"kind": "alpha_power", "alpha": 1.0}, "0 < alpha < 1"),
    ],
)
def test_bad_schedules_raise_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ScheduleSpec(**kwargs)


@pytest.mark.parametrize("kind", ["interp", "alpha_power"])
def test_non_vp_schedules_have_no_betas(kind: str) -> None:
    with pytest.raises(ConfigError, match="not variance preserving"):
        make_betas(ScheduleSpec(kind))


def test_family_and_timestep_meaning() -> None:
    assert [ScheduleSpec(k, num_train_timesteps=2, betas=(0.1, 0.2) if k == "betas" else None).family
            for k in KINDS] == ["vp", "vp", "vp", "vp", "interp", "alpha_power"]
    assert ScheduleSpec("cosine").timestep_meaning == "train_index"
    assert ScheduleSpec("interp").timestep_meaning == "step_index"
    assert ScheduleSpec("alpha_power").timestep_meaning == "noise_level"


# --- respacing (Lin et al. 2023, table 2) ---------------------------------------------------


@pytest.mark.parametrize(
    ("spacing", "offset", "expected"),
    [
        ("leading", 0, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("leading", 1, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        ("trailing", 0, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", 0, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_respace_matches_lin_et_al_table(spacing: str, offset: int, expected: list[int]) -> None:
    ts = respace(T, 10, spacing, offset)
    assert ts.dtype == np.int64
    np.testing.assert_array_equal(ts, expected)


def test_respace_non_divisible_counts() -> None:
    np.testing.assert_array_equal(respace(10, 3, "leading"), [6, 3, 0])  # ratio 10 // 3 = 3
    np.testing.assert_array_equal(respace(10, 3, "trailing"), [9, 6, 2])  # round(10 - k·3.33) - 1
    np.testing.assert_array_equal(respace(10, 3, "linspace"), [9, 4, 0])  # round(0, 4.5, 9), half to even


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 30, 50, 333, 999, 1000])
def test_respace_invariants(spacing: str, steps: int) -> None:
    ts = respace(T, steps, spacing)
    assert ts.shape == (steps,)
    assert ts.min() >= 0 and ts.max() <= T - 1
    assert np.all(np.diff(ts) < 0)  # strictly descending: every kept step is distinct


@pytest.mark.parametrize("spacing", SPACINGS)
def test_full_length_respacing_is_identity(spacing: str) -> None:
    np.testing.assert_array_equal(respace(T, T, spacing), np.arange(T)[::-1])


@pytest.mark.parametrize("steps", [0, -5, T + 1])
def test_steps_out_of_range_raise_helpful_error(steps: int) -> None:
    with pytest.raises(ConfigError, match=f"steps must be between 1 and {T} .*got {steps}"):
        respace(T, steps)
    with pytest.raises(ConfigError, match="training steps"):
        check_steps(steps, T)


def test_steps_offset_out_of_range_raises() -> None:
    with pytest.raises(ConfigError, match="steps_offset=1 pushes timesteps outside 0..999; lower it"):
        respace(T, T, "leading", steps_offset=1)
    with pytest.raises(ConfigError, match="steps_offset=-1"):
        respace(T, 10, "leading", steps_offset=-1)


def test_unknown_spacing_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown spacing 'even'; choose one of leading, trailing, linspace"):
        respace(T, 10, "even")


@pytest.mark.parametrize("spacing", SPACINGS)
def test_respaced_betas_keep_alphas_cumprod(spacing: str) -> None:
    spec = ScheduleSpec("cosine")
    kept = respace(T, 17, spacing)
    new = respaced_betas(spec, kept)
    np.testing.assert_allclose(np.cumprod(1.0 - new), alphas_cumprod(spec)[np.sort(kept)], rtol=1e-9)


# --- forward process --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_vp_forward_coefficients(kind: str) -> None:
    spec = ScheduleSpec(kind)
    t = np.array([0, 1, 500, 999])
    signal, noise = forward_coefficients(spec, t)
    abar = np.cumprod(1.0 - make_betas(spec))[t]
    np.testing.assert_allclose(signal, np.sqrt(abar), rtol=1e-14)
    np.testing.assert_allclose(signal**2 + noise**2, 1.0, rtol=1e-12)  # variance preserving


# --- serialization ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec("linear", num_train_timesteps=100, beta_start=2e-4, beta_end=0.03),
        ScheduleSpec("scaled_linear", beta_start=0.00085, beta_end=0.012),
        ScheduleSpec("cosine", cosine_s=0.01, max_beta=0.99),
        ScheduleSpec("betas", num_train_timesteps=3, betas=(0.1, 0.2, 0.3)),
        ScheduleSpec("interp", num_train_timesteps=16),
        ScheduleSpec("alpha_power", num_train_timesteps=500, alpha=0.99),
    ],
    ids=lambda s: s.kind,
)
@pytest.mark.parametrize("with_betas", [True, False])
def test_schedule_spec_round_trips_through_json(spec: ScheduleSpec, with_betas: bool) -> None:
    d = json.loads(json.dumps(spec.to_dict(with_betas=with_betas)))
    assert ScheduleSpec.from_dict(d) == spec
    if spec.family == "vp" and (with_betas or spec.kind == "betas"):  # explicit betas always travel
        np.testing.assert_array_equal(d["betas"], make_betas(spec))
    else:
        assert "betas" not in d


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"num_train_timesteps": 10}, "schedule needs a 'kind'"),
        ({"kind": "betas", "num_train_timesteps": 3}, "needs exactly num_train_timesteps explicit betas"),
        ({"kind": "sigmoid"}, "unknown schedule 'sigmoid'"),
    ],
)
def test_malformed_schedule_dicts_raise_config_error(d: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ScheduleSpec.from_dict(d)
