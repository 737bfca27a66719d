"""The bundles shipped in the package are what `ddpm-rt export` makes of the shipped weights today."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.exporter.export import ExportOptions, export_bundle
from ddpm_rt.models.catalog import BUILTIN, has_shipped_weights, shipped_bundle
from ddpm_rt.registry import open_backend
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.sources import resolve_source


@pytest.mark.parametrize("name", [n for n in BUILTIN if has_shipped_weights(n)])
def test_fresh_export_matches_the_shipped_bundle(name: str, tmp_path) -> None:
    shipped = shipped_bundle(name)
    assert shipped is not None, f"{name} has weights but no shipped bundle: run `ddpm-rt export {name} --out " \
                                f"ddpm_rt/assets/{name}/bundle`"
    src = resolve_source(name)
    assert src.bundle == shipped  # sampling a built-in needs no export
    ours = load_bundle(shipped)
    assert ours.manifest["source"] == {"kind": "builtin", "ref": name}
    assert ours.spec == src.spec
    export_bundle(src, tmp_path / "fresh", ExportOptions(trajectory_steps=0), status=lambda _: None)
    fresh = load_bundle(tmp_path / "fresh")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *src.spec.sample_shape), dtype=np.float32)
    plan = src.spec.plan(src.spec.sampler())
    # conditional models: labels over the classes and the null (the last sample)
    cond = [np.arange(4) % c.num_classes if c.null is None else np.r_[np.arange(3) % c.num_classes, int(c.null)]
            for c in src.spec.conditioning]
    opts = BackendOptions(threads=1, extra={"graph_cache": False})
    with open_backend("ort", ours, 4, opts) as a, open_backend("ort", fresh, 4, opts) as b:
        for t in (plan.timesteps[0], plan.timesteps[len(plan.timesteps) // 2], plan.timesteps[-1]):
            tt = np.full(4, t, np.float32)
            np.testing.assert_allclose(np.array(a(x, tt, *cond)), np.array(b(x, tt, *cond)), atol=1e-5, rtol=0)
