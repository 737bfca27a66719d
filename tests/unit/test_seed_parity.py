"""Seeds 000 and 004, transcribed in float64 numpy from their own formulas, against our plans.

Seed 000 (CIFAR interpolation model):
    time_bar = 1 - np.linspace(0, 1.0, timesteps + 1)            # timesteps = 16
    forward_noise(x, t): a, b = time_bar[t], time_bar[t + 1]
        img_a = x * (1 - a) + noise * a;  img_b = x * (1 - b) + noise * b
    predict(): x = N(0, 1);  for i in range(timesteps): x = model.predict([x, full(i)])

Seed 004 (MNIST patch transformer, alpha = 0.99, n_max = 500):
    add_noise: A_n = alpha^n·A_0 + (1 - alpha^n)·N,  n ~ U{0..n_max}, the model sees alpha^n
    alpha' = alpha^(n_max / n'_max)
    for n in n'_max..1:  N^ = M(A_n, alpha'^n);  A_{n-1} = (A_n - N^·(1 - alpha'^S)) / alpha'^S
    with STEP_SIZE S = 1 (the plain step) or 1.5 (the tested trust scaling).
"""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_rt.plan import SamplerSpec, build_plan
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.schedule import ScheduleSpec, forward_coefficients

RTOL = 1e-5


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# --- seed 000 ----------------------------------------------------------------------------

TIMESTEPS = 16
TIME_BAR = 1 - np.linspace(0, 1.0, TIMESTEPS + 1)


def test_seed000_forward_noise_matches_forward_coefficients(rng) -> None:
    spec = ScheduleSpec("interp", num_train_timesteps=TIMESTEPS)
    x, noise = rng.standard_normal((2, 5, 3))
    t = np.arange(TIMESTEPS)  # generate_ts draws from 0..timesteps-1; img_b uses t + 1
    for k in (t, t + 1):
        signal, scale = forward_coefficients(spec, k)
        a = TIME_BAR[k]
        seed = x[None] * (1 - a)[:, None, None] + noise[None] * a[:, None, None]
        ours = x[None] * signal[:, None, None] + noise[None] * scale[:, None, None]
        np.testing.assert_allclose(ours, seed, rtol=1e-15, atol=1e-15)


def _seed000_model(x0: np.ndarray, noise: np.ndarray):
    """An ideal seed-000 model: from img_a at step k, return img_b (x0 and the noise are known)."""

    def model(x: np.ndarray, k: int) -> np.ndarray:
        a, b = TIME_BAR[k], TIME_BAR[k + 1]
        return x0 * (1 - b) + noise * b + 0.01 * np.sin(x) * a  # + a small x-dependent error

    return model


def test_seed000_predict_loop(rng) -> None:
    x0, noise = rng.standard_normal((2, 4, 3, 8, 8))
    x_T = rng.standard_normal((4, 3, 8, 8))
    model = _seed000_model(x0, noise)

    # seed: for i in trange(timesteps): x = model.predict([x, np.full((B), i)])
    xs = [x_T]
    x = x_T
    for i in range(TIMESTEPS):
        x = model(x, i)
        xs.append(x)

    plan = build_plan(ScheduleSpec("interp", num_train_timesteps=TIMESTEPS), "next_sample",
                      SamplerSpec("direct", TIMESTEPS))
    seen: list[np.ndarray] = []

    def ours(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        k = len(seen)
        assert np.all(t == k)  # the model is conditioned on the step index i
        seen.append(x.copy())
        return model(x.astype(np.float64), k).astype(np.float32)

    final = sample_loop(ours, plan, x_T.astype(np.float32))
    assert len(seen) == TIMESTEPS
    for k in range(TIMESTEPS):
        assert _rel(seen[k], xs[k]) <= RTOL, k
    assert _rel(final, xs[-1]) <= RTOL
    assert _rel(final, x0) < 0.02  # the ideal model lands on x0 (time_bar[16] = 0)


# --- seed 004 ----------------------------------------------------------------------------

ALPHA, N_MAX = 0.99, 500


def test_seed004_add_noise_matches_forward_coefficients(rng) -> None:
    spec = ScheduleSpec("alpha_power", num_train_timesteps=N_MAX, alpha=ALPHA)
    imm, g_noise = rng.standard_normal((2, 6, 28, 28))
    n = np.array([0, 1, 2, 250, 499, 500])
    alphas_n = ALPHA ** n  # array_alphas_n
    seed = np.einsum("i, ikj -> ikj", alphas_n, imm) + np.einsum("i, ikj -> ikj", 1 - alphas_n, g_noise)
    signal, scale = forward_coefficients(spec, n)
    np.testing.assert_allclose(signal, alphas_n, rtol=1e-15)
    np.testing.assert_allclose(imm * signal[:, None, None] + g_noise * scale[:, None, None], seed, rtol=1e-12)


def _seed004_model(true_noise: np.ndarray):
    """M(A_n, alpha^n) -> N^: the true noise plus a small error that depends on A and the level."""

    def model(a: np.ndarray, level: float) -> np.ndarray:
        return true_noise + 0.05 * np.tanh(a) * level

    return model


def _seed004_update(A: np.ndarray, noise_pred: np.ndarray, g: float) -> np.ndarray:
    """A_{n-1} = (A_n - N^·(1 - alpha'^S)) / alpha'^S, with g = alpha'^S."""
    return (A - noise_pred * (1 - g)) / g


@pytest.mark.parametrize("step_size", [1.0, 1.5])
@pytest.mark.parametrize("n_prime", [500, 50, 7])
def test_seed004_inference_loop(n_prime: int, step_size: float, rng) -> None:
    true_noise = rng.standard_normal((2, 28, 28))
    A = rng.standard_normal((2, 28, 28))  # noised_imm = np.random.randn(SIZE, SIZE)
    model = _seed004_model(true_noise)

    # seed, with N = n'_max and ALPHA = alpha' = alpha^(n_max / n'_max)
    alpha_p = ALPHA ** (N_MAX / n_prime)
    g = alpha_p**step_size
    xs, levels = [A], []
    for n in range(n_prime, 0, -1):
        alpha_n = alpha_p**n
        levels.append(alpha_n)
        A = _seed004_update(A, model(A, alpha_n), g)
        xs.append(A)

    plan = build_plan(ScheduleSpec("alpha_power", num_train_timesteps=N_MAX, alpha=ALPHA), "epsilon",
                      SamplerSpec("geometric", n_prime, step_scale=step_size))
    seen: list[np.ndarray] = []
    step_ref: list[np.ndarray] = []  # the seed's update applied to *our* x at each step

    def ours(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        i = len(seen)
        np.testing.assert_allclose(t, levels[i], rtol=1e-7)  # conditioned on alpha'^n (float32)
        if i:
            assert _rel(x, step_ref[-1]) <= RTOL, f"step {i - 1}"
        seen.append(x.copy())
        out = model(x.astype(np.float64), float(t[0])).astype(np.float32)
        step_ref.append(_seed004_update(x.astype(np.float64), out.astype(np.float64), g))
        return out

    final = sample_loop(ours, plan, xs[0].astype(np.float32))
    assert len(seen) == n_prime
    assert _rel(final, step_ref[-1]) <= RTOL
    # Whole trajectories: the float32 tables round 1/alpha'^S once, and that relative error
    # (up to 2^-24) compounds over the n' steps: up to ~n'·6e-8, i.e. 3e-5 for n' = 500.
    drift = max(_rel(seen[i], xs[i]) for i in range(n_prime))
    assert max(drift, _rel(final, xs[-1])) <= max(RTOL, 2 * n_prime * 2.0**-24)
