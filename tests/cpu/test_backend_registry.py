"""One parity suite over the backend registry (unavailable backends skip), plus how `auto` chooses:
the fastest usable backend, and a GPU backend only after its first-use parity probe passed here."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_rt import registry
from ddpm_rt.errors import BackendUnavailable
from ddpm_rt.prepare import choose_backend, open_for
from ddpm_rt.registry import REGISTRY, BackendEntry, unavailable_reason
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.loop import initial_noise
from ddpm_rt.sources import resolve_source

TOL = {"swissroll": 1e-5, "digits": 1e-4}  # final-sample max-abs vs eager torch, fp32


@pytest.fixture(scope="module")
def eager_results():
    """Eager torch on each model: the reference every backend is held to."""
    out = {}
    for name in TOL:
        src = resolve_source(name)
        plan = src.spec.plan(src.spec.sampler(8, sampler="ddim"))
        x = initial_noise((4, *src.spec.sample_shape), np.random.default_rng(0))
        with open_for("torch", src, 4, BackendOptions(threads=1)) as be:
            out[name] = (src, plan, x, be.sample(plan, x))
    return out


@pytest.mark.parametrize("model", sorted(TOL))
@pytest.mark.parametrize("backend", [n for n in REGISTRY if n != "torch"])
def test_every_backend_matches_eager(backend: str, model: str, eager_results, tmp_path, monkeypatch) -> None:
    reason = unavailable_reason(backend)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path))
    src, plan, x, ref = eager_results[model]
    with open_for(backend, src, 4, BackendOptions(threads=1)) as be:
        got = be.sample(plan, x)
    assert np.max(np.abs(got - ref)) <= TOL[model]


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    from tests.helpers.fake_backend import FakeBackend, FakeGpuBackend

    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path))
    FakeGpuBackend.scale = FakeBackend.scale
    entries = {
        "fake-gpu": BackendEntry("tests.helpers.fake_backend", "FakeGpuBackend", 100, "fake GPU", gpu=True),
        "fake": BackendEntry("tests.helpers.fake_backend", "FakeBackend", 30, "fake CPU"),
    }
    monkeypatch.setattr(registry, "REGISTRY", {**entries, **REGISTRY})
    import ddpm_rt.prepare as prepare

    monkeypatch.setattr(prepare, "REGISTRY", registry.REGISTRY)
    return FakeBackend, FakeGpuBackend


def test_auto_takes_an_unproven_gpu_backend_only_after_its_probe_passes(fakes) -> None:
    from ddpm_rt.gpu import probe

    fake, fake_gpu = fakes
    src = resolve_source("swissroll")
    fake_gpu.scale = 0.9  # disagrees with the CPU reference (ORT on the real bundle)
    choice = choose_backend("auto", src)
    assert choice.name != "fake-gpu" and "fake-gpu (failed its first-use parity probe" in choice.reason
    verdict = probe.proven("fake-gpu")
    assert verdict is not None and not verdict["ok"] and verdict["rel_rms"] > probe.TOLERANCE
    assert choose_backend("auto", src).name != "fake-gpu"  # the failed verdict is cached, not re-probed
    assert choose_backend("fake-gpu", src).name == "fake-gpu"  # an explicit choice is never fenced


def test_a_gpu_backend_that_agrees_is_chosen_and_the_verdict_is_kept(fakes, monkeypatch) -> None:
    from ddpm_rt.gpu import probe

    _, fake_gpu = fakes
    src = resolve_source("swissroll")
    import ddpm_rt.prepare as prepare

    # the CPU reference is the fake CPU backend itself here, so an equal scale agrees exactly
    monkeypatch.setattr(prepare, "_REFERENCE", "fake")
    assert choose_backend("auto", src).name == "fake-gpu"
    assert probe.proven("fake-gpu")["ok"]


def test_no_usable_backend_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(registry, "available_backends", lambda: [])
    import ddpm_rt.prepare as prepare

    monkeypatch.setattr(prepare, "available_backends", lambda: [])
    with pytest.raises(BackendUnavailable, match="doctor"):
        choose_backend("auto", resolve_source("swissroll"))


def test_the_fake_backend_drives_the_shared_loop(fakes) -> None:
    src = resolve_source("swissroll")
    plan = src.spec.plan(src.spec.sampler(10, sampler="ddim"))
    with open_for("fake", src, 3) as be:
        out = be.sample(plan, np.ones((3, 2), np.float32))
        assert be.calls == 10 and be.host_loop
    assert out.shape == (3, 2) and np.all(np.isfinite(out))
