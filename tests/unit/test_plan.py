"""SamplingPlan tables: shapes, closed forms, error paths; DiffusionSpec round trip (numpy only)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpm_rt.errors import ConfigError
from ddpm_rt.plan import (
    VARIANCE_TYPES,
    SamplerSpec,
    build_plan,
    default_sampler,
)
from ddpm_rt.schedule import ScheduleSpec, alphas_cumprod, respace
from ddpm_rt.spec import DiffusionSpec

COSINE = ScheduleSpec("cosine")
VP_PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _all_plans():
    """(id, schedule, prediction type, sampler, clip) for every sampler family and knob."""
    for sampler in ("ddpm", "ddim"):
        for spacing in ("leading", "trailing", "linspace"):
            for pred in VP_PREDICTIONS:
                for clip in (None, (-1.0, 1.0)):
                    for steps in (1, 10, 1000):
                        spec = SamplerSpec(sampler, steps, spacing, eta=0.5, variance_type="fixed_large")
                        yield f"{sampler}-{spacing}-{pred}-{clip}-{steps}", COSINE, pred, spec, clip
    interp = ScheduleSpec("interp", num_train_timesteps=16)
    yield "direct", interp, "next_sample", SamplerSpec("direct", 16), None
    power = ScheduleSpec("alpha_power", num_train_timesteps=500)
    for steps in (1, 7, 500):
        yield f"geometric-{steps}", power, "epsilon", SamplerSpec("geometric", steps, step_scale=1.5), None


PLANS = list(_all_plans())


@pytest.mark.parametrize(("schedule", "pred", "sampler", "clip"), [p[1:] for p in PLANS],
                         ids=[p[0] for p in PLANS])
def test_plan_tables_are_finite_float32_of_length_n(schedule, pred, sampler, clip) -> None:
    plan = build_plan(schedule, pred, sampler, clip)
    n = sampler.steps
    assert plan.steps == n
    for name in ("timesteps", "a", "b", "sigma", "cx", "co", "p0"):
        col = getattr(plan, name)
        assert col.dtype == np.float32 and col.shape == (n,), name
        assert col.flags.c_contiguous and np.all(np.isfinite(col)), name
    assert plan.train_timesteps.dtype == np.int64 and plan.train_timesteps.shape == (n,)
    assert np.all(plan.sigma >= 0)
    table = plan.table()
    assert table.dtype == np.float32 and table.shape == (n, 7)
    np.testing.assert_array_equal(table[:, 0], plan.timesteps)
    np.testing.assert_array_equal(table[:, 3], plan.sigma)
    if clip is None:
        assert not np.any(plan.p0) and plan.clip is None
    else:
        assert plan.clip == clip


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_vp_timesteps_come_from_respace(spacing: str) -> None:
    plan = build_plan(COSINE, "epsilon", SamplerSpec("ddim", 30, spacing))
    np.testing.assert_array_equal(plan.train_timesteps, respace(1000, 30, spacing))
    np.testing.assert_array_equal(plan.timesteps, plan.train_timesteps.astype(np.float32))


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_previous_timestep_is_the_next_list_entry(set_alpha_to_one: bool) -> None:
    # linspace 10 of 1000 keeps 999, 888, ...: t - T//N (= t - 100) would be wrong here
    plan = build_plan(COSINE, "epsilon", SamplerSpec("ddim", 10, "linspace",
                                                     set_alpha_to_one=set_alpha_to_one))
    acs = alphas_cumprod(COSINE)
    ts = plan.train_timesteps
    final = 1.0 if set_alpha_to_one else acs[0]
    np.testing.assert_array_equal(plan.meta["alphas_cumprod"], acs[ts])
    np.testing.assert_array_equal(plan.meta["alphas_cumprod_prev"], np.append(acs[ts[1:]], final))


def _closed_form(pred: str, ac: np.ndarray, ac_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DDIM eta=0 (Song et al. eq. 12) as coefficients of x and out, in float64."""
    sa, sb, sap, sbp = np.sqrt(ac), np.sqrt(1 - ac), np.sqrt(ac_prev), np.sqrt(1 - ac_prev)
    if pred == "epsilon":  # x' = sap·(x - sb·e)/sa + sbp·e
        return sap / sa, sbp - sap * sb / sa
    if pred == "sample":  # x' = sap·x0 + sbp·(x - sa·x0)/sb
        return sbp / sb, sap - sbp * sa / sb
    # v: x0 = sa·x - sb·v, e = sa·v + sb·x
    return sap * sa + sbp * sb, sbp * sa - sap * sb


@pytest.mark.parametrize("pred", VP_PREDICTIONS)
def test_ddim_eta0_coefficients_match_eq12(pred: str) -> None:
    plan = build_plan(COSINE, pred, SamplerSpec("ddim", 50, "trailing", eta=0.0))
    a, b = _closed_form(pred, plan.meta["alphas_cumprod"], plan.meta["alphas_cumprod_prev"])
    np.testing.assert_allclose(plan.a, a, rtol=1e-6)
    np.testing.assert_allclose(plan.b, b, rtol=1e-6, atol=1e-7)
    assert not plan.stochastic and plan.sampler.deterministic


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_ddpm_sigma_is_posterior_or_beta(variance_type: str) -> None:
    schedule = ScheduleSpec("linear")
    plan = build_plan(schedule, "epsilon", SamplerSpec("ddpm", 10, "leading", variance_type=variance_type))
    ac, acp = plan.meta["alphas_cumprod"], plan.meta["alphas_cumprod_prev"]
    beta = 1 - ac / acp
    var = beta if variance_type == "fixed_large" else (1 - acp) / (1 - ac) * beta  # Ho et al. eq. 7
    expected = np.where(plan.train_timesteps > 0, np.sqrt(var), 0.0)  # no noise at train step 0
    np.testing.assert_allclose(plan.sigma, expected, rtol=1e-6)
    assert plan.sigma[-1] == 0 and np.all(plan.sigma[:-1] > 0) and plan.stochastic
    # the mean: Ho et al. eq. 7 with x0^ = (x - sqrt(1-abar)·eps)/sqrt(abar) folded in
    np.testing.assert_allclose(plan.a, 1 / np.sqrt(1 - beta), rtol=1e-6)
    np.testing.assert_allclose(plan.b, -beta / (np.sqrt(1 - beta) * np.sqrt(1 - ac)), rtol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("pred", VP_PREDICTIONS)
def test_clip_split_equals_folded_update_when_clip_is_inactive(sampler: str, pred: str, rng) -> None:
    spec = SamplerSpec(sampler, 20, "trailing", eta=1.0)
    folded = build_plan(COSINE, pred, spec)
    split = build_plan(COSINE, pred, spec, clip=(-1e30, 1e30))
    x, out = rng.standard_normal((2, 5))
    for i in range(20):
        x0 = split.cx[i].astype(np.float64) * x + split.co[i] * out
        lhs = split.a[i].astype(np.float64) * x + split.b[i] * out + split.p0[i] * x0
        rhs = folded.a[i].astype(np.float64) * x + folded.b[i] * out
        np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4 * np.abs(rhs).max())
    np.testing.assert_array_equal(split.sigma, folded.sigma)


def test_eta_scales_ddim_sigma() -> None:
    s1 = build_plan(COSINE, "epsilon", SamplerSpec("ddim", 10, eta=1.0)).sigma
    s_half = build_plan(COSINE, "epsilon", SamplerSpec("ddim", 10, eta=0.5)).sigma
    np.testing.assert_allclose(s_half, 0.5 * s1, rtol=1e-6)
    assert s1[-1] == 0 and np.all(s1[:-1] > 0)  # abar' = 1 after the last step: no noise


def test_geometric_plan_uses_alpha_prime() -> None:
    power = ScheduleSpec("alpha_power", num_train_timesteps=500, alpha=0.99)
    plan = build_plan(power, "epsilon", SamplerSpec("geometric", 50, step_scale=1.5))
    alpha_p = 0.99 ** (500 / 50)
    assert plan.meta["alpha_prime"] == pytest.approx(alpha_p, rel=1e-15)
    np.testing.assert_array_equal(plan.train_timesteps, np.arange(50, 0, -1))
    np.testing.assert_allclose(plan.timesteps, alpha_p ** np.arange(50, 0, -1.0), rtol=1e-7)
    assert plan.timesteps[0] == pytest.approx(0.99**500, rel=1e-6)  # same top level as n_max = 500


# --- error paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of ddpm, ddim, direct, geometric"),
        ({"spacing": "even"}, "unknown spacing 'even'; choose one of leading, trailing, linspace"),
        ({"variance_type": "fixed_large_log"},
         "unknown variance type 'fixed_large_log'; choose one of fixed_small, fixed_small_log, fixed_large"),
        ({"variance_type": "learned"}, "choose one of fixed_small, fixed_small_log, fixed_large"),
        ({"variance_type": "learned_range"}, "choose one of fixed_small, fixed_small_log, fixed_large"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"steps": -3}, "steps must be >= 1, got -3"),
        ({"eta": -0.1}, "eta must be >= 0"),
        ({"step_scale": 0.0}, "step_scale must be > 0"),
    ],
)
def test_bad_sampler_specs_raise_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SamplerSpec(**kwargs)


@pytest.mark.parametrize(
    ("schedule", "pred", "sampler", "clip", "match"),
    [
        (COSINE, "score", SamplerSpec(), None,
         "unknown prediction type 'score'; choose one of epsilon, sample, v_prediction, next_sample"),
        (COSINE, "next_sample", SamplerSpec(), None, "cannot drive ddpm/ddim; use epsilon, sample or v_prediction"),
        (COSINE, "epsilon", SamplerSpec("geometric"), None, "use --sampler ddim or ddpm"),
        (COSINE, "epsilon", SamplerSpec(steps=1001), None, "steps must be between 1 and 1000"),
        (COSINE, "epsilon", SamplerSpec(), (1.0, -1.0), "low < high"),
        (COSINE, "epsilon", SamplerSpec("ddim", 1000, steps_offset=1), None, "steps_offset=1"),
        (ScheduleSpec("interp", num_train_timesteps=16), "epsilon", SamplerSpec("direct", 16), None,
         "needs prediction type 'next_sample'"),
        (ScheduleSpec("interp", num_train_timesteps=16), "next_sample", SamplerSpec("direct", 8), None,
         "use --steps 16"),
        (ScheduleSpec("interp", num_train_timesteps=16), "next_sample", SamplerSpec("ddim", 16), None,
         "use --sampler direct"),
        (ScheduleSpec("alpha_power", num_train_timesteps=500), "sample", SamplerSpec("geometric", 50), None,
         "needs prediction type 'epsilon'"),
        (ScheduleSpec("alpha_power", num_train_timesteps=500), "epsilon", SamplerSpec("geometric", 501), None,
         "steps must be between 1 and 500"),
    ],
)
def test_bad_plans_raise_config_error(schedule, pred, sampler, clip, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_plan(schedule, pred, sampler, clip)


def test_default_sampler_per_family() -> None:
    assert default_sampler(COSINE) == SamplerSpec("unipc", 15)  # measured: see plan.VP_DEFAULT
    assert default_sampler(COSINE, 10) == SamplerSpec("unipc", 10)
    assert default_sampler(COSINE, sampler="ddim") == SamplerSpec("ddim", 50)
    small = ScheduleSpec("cosine", num_train_timesteps=40)
    assert default_sampler(small, 40) == SamplerSpec("ddim", 40)  # unipc would repeat timesteps near N = T
    assert default_sampler(small) == SamplerSpec("unipc", 15)
    assert default_sampler(ScheduleSpec("interp", num_train_timesteps=16)) == SamplerSpec("direct", 16)
    power = ScheduleSpec("alpha_power", num_train_timesteps=500)
    assert default_sampler(power, step_scale=1.5) == SamplerSpec("geometric", 500, step_scale=1.5)
    assert SamplerSpec("ddpm").deterministic is False
    assert SamplerSpec("ddim", eta=0.5).deterministic is False


# --- DiffusionSpec ----------------------------------------------------------------------


SPECS = [
    DiffusionSpec(ScheduleSpec("linear"), "epsilon", (3, 32, 32), clip=(-1.0, 1.0)),
    DiffusionSpec(ScheduleSpec("cosine", num_train_timesteps=4000), "v_prediction", (1, 28, 28),
                  data_range=(0.0, 1.0), sampler_defaults={"sampler": "ddpm", "variance_type": "fixed_large"}),
    DiffusionSpec(ScheduleSpec("betas", num_train_timesteps=2, betas=(0.1, 0.5)), "sample", (2,)),
    DiffusionSpec(ScheduleSpec("interp", num_train_timesteps=16), "next_sample", (3, 32, 32)),
    DiffusionSpec(ScheduleSpec("alpha_power", num_train_timesteps=500), "epsilon", (28, 28, 1),
                  sampler_defaults={"step_scale": 1.5}),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.schedule.kind)
def test_diffusion_spec_round_trips_through_json(spec: DiffusionSpec) -> None:
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["timestep_meaning"] == spec.schedule.timestep_meaning
    back = DiffusionSpec.from_dict(d)
    assert back == spec
    sampler = back.sampler()
    np.testing.assert_array_equal(back.plan(sampler).table(), spec.plan(spec.sampler()).table())


def test_diffusion_spec_sampler_merges_defaults_then_overrides() -> None:
    spec = SPECS[1]
    assert spec.sampler() == SamplerSpec("ddpm", 50, variance_type="fixed_large")
    assert spec.sampler(10, sampler="ddim", eta=None) == SamplerSpec("ddim", 10, variance_type="fixed_large")
    assert SPECS[4].sampler(7) == SamplerSpec("geometric", 7, step_scale=1.5)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("prediction_type"), "missing or has a malformed field"),
        (lambda d: d.update(sample_shape=None), "missing or has a malformed field"),
        (lambda d: d.update(prediction_type="noise"), "unknown prediction type 'noise'"),
        (lambda d: d.update(sample_shape=[3, 32]), r"sample shape must be \(C, H, W\) or \(D,\)"),
        (lambda d: d.update(sample_shape=[0]), "sample shape must be"),
        (lambda d: d["schedule"].pop("kind"), "schedule needs a 'kind'"),
    ],
)
def test_malformed_diffusion_spec_raises_config_error(mutate, match: str) -> None:
    d = SPECS[0].to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        DiffusionSpec.from_dict(d)



def test_default_sampler_never_exceeds_training_steps() -> None:
    short = ScheduleSpec("linear", num_train_timesteps=20)
    assert default_sampler(short) == SamplerSpec("ddim", 15)  # 15 > 20 // 2: unipc would repeat timesteps
    build_plan(short, "epsilon", default_sampler(short))  # valid as is


def test_head_is_the_first_steps_and_runs_them_exactly(rng) -> None:
    from ddpm_rt.runtime.loop import sample_loop

    spec = DiffusionSpec(schedule=ScheduleSpec(kind="linear", num_train_timesteps=1000),
                         prediction_type="epsilon", sample_shape=(3,), clip=(-1.0, 1.0))
    plan = spec.plan(spec.sampler(10, sampler="ddim", eta=0.5))
    head = plan.head(3)
    assert head.steps == 3 and head.clip == plan.clip and head.sampler == plan.sampler
    np.testing.assert_array_equal(head.table(), plan.table()[:3])
    head.a[0] = 123.0  # a copy: the full plan is untouched
    assert plan.a[0] != 123.0

    def model(x, t):  # any deterministic function of (x, t)
        return np.tanh(x * 0.7 + t[:, None] * 1e-3)

    x0 = rng.standard_normal((2, 3)).astype(np.float32)
    noise = rng.standard_normal((10, 2, 3)).astype(np.float32)
    three = sample_loop(model, plan.head(3), x0, noise=noise[:3])
    calls = []
    sample_loop(lambda x, t: (calls.append(x.copy()), model(x, t))[1], plan, x0, noise=noise)
    np.testing.assert_array_equal(three, calls[3])  # the 4th call of the full loop sees head(3)'s result


@pytest.mark.parametrize("k", [0, 11, -1])
def test_head_out_of_range_is_a_config_error(k: int) -> None:
    spec = DiffusionSpec(schedule=ScheduleSpec(kind="linear", num_train_timesteps=1000),
                         prediction_type="epsilon", sample_shape=(3,))
    with pytest.raises(ConfigError, match="k must be in 1..10"):
        spec.plan(spec.sampler(10)).head(k)
