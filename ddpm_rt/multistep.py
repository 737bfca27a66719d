"""Multistep ODE solvers as per-step history coefficients, built once in float64 numpy.

Solvers: DPM-Solver++ 2M / 3M (Lu et al. 2022, arXiv 2211.01095, Alg. 2 for 2M; the
third-order multistep form derived in arXiv 2206.00927; data prediction), UniPC with
B(h) = e^h - 1 ("bh2"; Zhao et al. 2023, arXiv 2302.04867: UniP-2 predictor + UniC
corrector), and iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator", arXiv 2204.13902: Adams–Bashforth on eps^ in the noise level s,
lower orders for warm-up). The step rules follow diffusers' DPMSolverMultistepScheduler /
UniPCMultistepScheduler and k-diffusion's sample_ipndm.

Notation, per step i = 0..N-1 at kept train timestep t_i:

    s_i      noise level sqrt((1 - abar)/abar) at t_i, or Karras et al. 2022 eq. 5 (rho = 7)
             between s(T-1) and s(0); s_N = 0 (the last step lands on clean data)
    alpha_i  = 1/sqrt(1 + s_i²),  sigma_i = s_i·alpha_i        x = alpha·x0 + sigma·eps
    lambda_i = log(alpha_i / sigma_i) = -log s_i                half log-SNR (lambda_N = +inf)
    h_i      = lambda_{i+1} - lambda_i,   phi_i = e^{-h_i} - 1
    d_i      the converted model output: x0^ (DPM-Solver++, UniPC) or eps^ (iPNDM)

Every step is linear in the sample and the last H + 1 converted outputs:

    x_{i+1} = a_i·x_i + Σ_{j=0..H} w_{i,j}·d_{i-j}            (w_{i,j} = 0 where i - j < 0)

* DPM-Solver++, order k (D0 = d_i, r_j = h_{i-1-j}/h_i):
    k=1:  x' = (sigma_{i+1}/sigma_i)·x - alpha_{i+1}·phi·D0
    k=2:  ... - ½·alpha_{i+1}·phi·D1,               D1 = (d_i - d_{i-1})/r0
    k=3:  ... + alpha_{i+1}(phi/h + 1)·D1 - alpha_{i+1}((phi + h)/h² - ½)·D2 with
          D1 = D1_0 + r0/(r0+r1)·(D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
          D1_0 = (d_i - d_{i-1})/r0, D1_1 = (d_{i-1} - d_{i-2})/r1
* UniPC-2 (bh2): predictor P from the corrected sample c_i; corrector C from c_{i-1}:
    c_i     = (sigma_i/sigma_{i-1})·c_{i-1} + C_i(d_i, d_{i-1}, d_{i-2})     (c_0 = x_0)
    x_{i+1} = (sigma_{i+1}/sigma_i)·c_i + P_i(d_i, d_{i-1})
  Since x_i = (sigma_i/sigma_{i-1})·c_{i-1} + P_{i-1}, c_i = x_i + C_i - P_{i-1}: the corrected
  sample needs no buffer of its own and x_{i+1} keeps the form above.
* iPNDM (noise-level form, x/alpha = x0 + s·eps): x'/alpha' = x/alpha + (s' - s)·Σ_j c_j·d_{i-j}
  with Adams–Bashforth c = [1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24 by order.

Orders: DPM-Solver++ warms up (order <= i + 1), takes order 1 on the last step (it lands on
s = 0, where h = inf) and, with lower_order_final and N < 15, order <= 2 on the one before;
UniPC takes order min(2, i + 1, N - i with lower_order_final), its corrector at step i the
predictor order of step i - 1, and order 1 on the last step in every case (see `orders`).
"""

from __future__ import annotations

import numpy as np

from ddpm_rt.errors import ConfigError

MULTISTEP = ("dpmpp-2m", "dpmpp-3m", "unipc", "ipndm")
HISTORY = {"dpmpp-2m": 1, "dpmpp-3m": 2, "unipc": 2, "ipndm": 3}  # H: past outputs each step reads
CONVERTS_TO = {"dpmpp-2m": "x0", "dpmpp-3m": "x0", "unipc": "x0", "ipndm": "eps"}
MAX_ORDER = {"dpmpp-2m": 2, "dpmpp-3m": 3, "unipc": 2, "ipndm": 4}
KARRAS_RHO = 7.0
# iPNDM's Adams–Bashforth weights by order (as k-diffusion's sample_ipndm)
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _sigma_to_t(sig: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional train index of each noise level: linear in log s between neighbours."""
    ls = np.log(np.maximum(sig, 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, ls, side="right") - 1, 0, len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - ls) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def karras_levels(level_all: np.ndarray, steps: int, sampler: str, cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps int64 [N], s [N]) on Karras et al. 2022 eq. 5 between s(T-1) and s(0).

    The model's timestep is the train index nearest s_i in log s, rounded; diffusers'
    DPMSolverMultistepScheduler truncates it instead for the cosine schedule (kept for parity).
    """
    s_min, s_max = level_all[0], level_all[-1]
    ramp = np.linspace(0, 1, steps)
    sig = (s_max ** (1 / KARRAS_RHO) + ramp * (s_min ** (1 / KARRAS_RHO) - s_max ** (1 / KARRAS_RHO))) ** KARRAS_RHO
    t = _sigma_to_t(sig, np.log(level_all))
    t = np.floor(t) if (cosine and sampler.startswith("dpmpp")) else np.round(t)
    return t.astype(np.int64), sig


def orders(sampler: str, steps: int, lower_order_final: bool, start: int = 0) -> np.ndarray:
    """The order each step uses, int64 [N] (see the module docstring).

    With `start` > 0 (an edit that begins mid-schedule) the solver warms up from step `start`, as
    diffusers' schedulers after ``set_begin_index``: order <= i - start + 1. The final-step rules
    stay tied to the full schedule of N steps. Steps before `start` are never run (order 0).
    """
    i = np.arange(steps)
    k = MAX_ORDER[sampler]
    o = np.clip(np.minimum(k, i - start + 1), 0, None)
    if sampler.startswith("dpmpp") and lower_order_final and steps < 15:
        o[-2:] = np.minimum(o[-2:], 2)
    if sampler == "unipc" and lower_order_final:
        o = np.minimum(o, steps - i)
    if sampler != "ipndm":
        o[-1] = 1  # the last step lands on s = 0 (h = inf), where only order 1 is defined
    return o


def _dpmpp(o: int, h: float, r: list[float], alpha_t: float) -> np.ndarray:
    """Weights of (d_i, d_{i-1}, d_{i-2}) in one DPM-Solver++ step of order `o`."""
    phi = np.expm1(-h)
    w = np.zeros(3)
    w[0] = -alpha_t * phi  # order 1: - alpha·phi·D0
    if o == 2:
        d1 = np.array([1.0, -1.0, 0.0]) / r[0]
        w += -0.5 * alpha_t * phi * d1
    elif o == 3:
        d10 = np.array([1.0, -1.0, 0.0]) / r[0]
        d11 = np.array([0.0, 1.0, -1.0]) / r[1]
        d1 = d10 + r[0] / (r[0] + r[1]) * (d10 - d11)
        d2 = (d10 - d11) / (r[0] + r[1])
        w += alpha_t * (phi / h + 1.0) * d1 - alpha_t * ((phi + h) / h**2 - 0.5) * d2
    return w


def _unipc_rhos(order: int, h: float, rks: list[float], corrector: bool) -> np.ndarray:
    """UniPC's rho weights (bh2, data prediction), as diffusers' multistep_uni_{p,c}_bh_update."""
    hh = -h
    h_phi_1 = np.expm1(hh)
    b_h = h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    fact = 1
    rk = np.array([*rks, 1.0])
    big_r, b = [], []
    for k in range(1, order + 1):
        big_r.append(rk ** (k - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    if corrector:
        return np.array([0.5]) if order == 1 else np.linalg.solve(np.array(big_r), np.array(b))
    assert order <= 2, "UniPC predictor rhos are implemented up to order 2"
    return np.array([0.5]) if order == 2 else np.zeros(0)


def _unipc(order: int, lam: np.ndarray, i: int, alpha_t: float, corrector: bool) -> np.ndarray:
    """Weights of (d_i, d_{i-1}, d_{i-2}) in UniPC's predictor from c_i (corrector=False), or its
    corrector from c_{i-1} to c_i (corrector=True, whose "current" output is d_i)."""
    # predictor: from step i to i+1, m0 = d_i;   corrector: from step i-1 to i, m0 = d_{i-1}
    s0, t, m0 = (i - 1, i, 1) if corrector else (i, i + 1, 0)
    h = lam[t] - lam[s0]
    phi = np.expm1(-h)
    w = np.zeros(3)
    w[m0] -= alpha_t * phi  # - alpha_t·h_phi_1·m0
    rks, d1s = [], []
    for k in range(1, order):  # D1_k = (m_k - m0)/r_k, m_k = the output k steps before m0
        r = (lam[s0 - k] - lam[s0]) / h
        rks.append(r)
        d = np.zeros(3)
        d[m0 + k], d[m0] = 1.0 / r, -1.0 / r
        d1s.append(d)
    rhos = _unipc_rhos(order, h, rks, corrector)
    res = np.zeros(3)
    for rho, d in zip(rhos, d1s, strict=False):
        res += rho * d
    if corrector:  # + rho_last·(d_i - m0)
        d = np.zeros(3)
        d[0], d[m0] = 1.0, -1.0
        res += rhos[-1] * d
    return w - alpha_t * phi * res  # B_h = h_phi_1 for bh2


def history_coefficients(sampler: str, level: np.ndarray, lower_order_final: bool,
                         start: int = 0) -> tuple[np.ndarray, ...]:
    """(a [N - start], w [N - start, H + 1], orders [N - start]) in float64 for noise levels
    `level` = s_0..s_N (s_N = 0), for the steps start..N-1 of a run that begins at step `start`."""
    if sampler not in MULTISTEP:
        raise ConfigError(f"{sampler!r} is not a multistep sampler; choose one of {', '.join(MULTISTEP)}")
    n = len(level) - 1
    alpha = 1.0 / np.sqrt(1.0 + level**2)  # alpha_N = 1
    sig = level * alpha  # sigma_N = 0
    with np.errstate(divide="ignore"):
        lam = -np.log(level)  # lambda_N = +inf
    order = orders(sampler, n, lower_order_final, start)
    a = np.zeros(n)
    w = np.zeros((n, 4))  # (d_i, d_{i-1}, d_{i-2}, d_{i-3}); cut to H + 1 below
    p_prev = np.zeros(3)  # UniPC: the previous step's predictor weights P_{i-1}
    for i in range(start, n):
        o = int(order[i])
        if sampler == "ipndm":
            # x'/alpha' = x/alpha + (s' - s)·Σ_j c_j·d_{i-j}
            a[i] = alpha[i + 1] / alpha[i]
            w[i, :o] = alpha[i + 1] * (level[i + 1] - level[i]) * np.array(AB[o])
            continue
        a[i] = sig[i + 1] / sig[i]
        if sampler.startswith("dpmpp"):
            h = lam[i + 1] - lam[i]
            r = [(lam[i - k] - lam[i - k - 1]) / h for k in range(o - 1)]
            w[i, :3] = _dpmpp(o, h, r, alpha[i + 1])
            continue
        # UniPC: x_{i+1} = a_i·c_i + P_i, c_i = x_i + C_i - P_{i-1} (module docstring)
        pred = _unipc(o, lam, i, alpha[i + 1], corrector=False)
        w[i, :3] = pred
        if i > start:  # no corrector on the first step run (diffusers: last_sample is None there)
            c = _unipc(int(order[i - 1]), lam, i, alpha[i], corrector=True)
            # P_{i-1} was over (d_{i-1}, d_{i-2}): one place later in step i's frame
            w[i, :3] += a[i] * (c - np.r_[0.0, p_prev[:2]])
        p_prev = pred
    assert a.shape == (n,) and w.shape == (n, 4)
    assert np.all(w[np.arange(4)[None, :] > np.arange(n)[:, None] - start] == 0), "a weight on d before the start"
    return a[start:], w[start:, : HISTORY[sampler] + 1], order[start:]
