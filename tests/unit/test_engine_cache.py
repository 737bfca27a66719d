"""Engine cache: keys, the per-key lock (two processes, one build), atomic writes, stale detection.

No TensorRT and no torch: a "build" here is any function returning bytes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest

from ddpm_rt.errors import ConfigError
from ddpm_rt.gpu.engine_cache import (
    EngineCache,
    EngineMeta,
    engine_key,
    timing_cache_name,
)

META = EngineMeta(
    onnx_sha256="ab" * 32,
    trt_version="10.3.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    min_batch=1,
    opt_batch=8,
    max_batch=16,
    opt_level=3,
)
CHANGED = {
    "onnx_sha256": "cd" * 32,
    "trt_version": "10.4.0",
    "gpu_name": "NVIDIA A100-SXM4-40GB",
    "compute_capability": "8.0",
    "precision": "fp32",
    "min_batch": 2,
    "opt_batch": 4,
    "max_batch": 32,
    "opt_level": 5,
}


def test_key_is_stable_and_hex() -> None:
    k = engine_key(META)
    assert k == engine_key(EngineMeta(**META.to_dict())) == META.key()
    assert len(k) == 20 and int(k, 16) >= 0


def test_every_field_changes_the_key() -> None:
    assert set(CHANGED) == {f.name for f in fields(EngineMeta)}  # no field forgotten
    keys = {engine_key(replace(META, **{name: value})) for name, value in CHANGED.items()}
    assert len(keys) == len(CHANGED) and META.key() not in keys


@pytest.mark.parametrize("lo,opt,hi", [(0, 1, 1), (2, 1, 4), (1, 8, 4)])
def test_bad_batch_range_is_config_error(lo: int, opt: int, hi: int) -> None:
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        replace(META, min_batch=lo, opt_batch=opt, max_batch=hi)


def test_timing_cache_name_depends_on_version_and_gpu() -> None:
    a = timing_cache_name("10.3.0", "H100", "9.0")
    assert a == timing_cache_name("10.3.0", "H100", "9.0") and a.endswith(".cache")
    assert a != timing_cache_name("10.4.0", "H100", "9.0")
    assert a != timing_cache_name("10.3.0", "A100", "8.0")


def test_build_once_then_cached(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    calls: list[int] = []

    def build() -> bytes:
        calls.append(1)
        return b"engine-bytes"

    first = cache.get_or_build(META, build)
    assert first.built and first.plan_path.read_bytes() == b"engine-bytes"
    assert first.plan_path.name == f"{META.key()}.plan"
    record = json.loads((tmp_path / "engines" / f"{META.key()}.json").read_text())
    assert record["key"] == META.key() and record["meta"] == META.to_dict()
    second = cache.get_or_build(META, build)
    assert not second.built and second.plan_path == first.plan_path and len(calls) == 1
    forced = cache.get_or_build(META, build, force=True)
    assert forced.built and len(calls) == 2


def _race_worker(directory: str, counter: str, barrier, results) -> None:
    cache = EngineCache(Path(directory))
    messages: list[str] = []

    def slow_build() -> bytes:
        with open(counter, "a") as f:  # one line per build that actually ran
            f.write("built\n")
        time.sleep(0.6)  # long enough that the others arrive while the lock is held
        return b"the-one-engine"

    barrier.wait()
    engine = cache.get_or_build(META, slow_build, log=messages.append)
    results.put((engine.built, engine.plan_path.read_bytes(), messages))


def test_concurrent_builders_build_exactly_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    counter = tmp_path / "builds.txt"
    procs = [
        ctx.Process(target=_race_worker, args=(str(tmp_path / "engines"), str(counter), barrier, results))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert counter.read_text().splitlines() == ["built"]  # exactly one build ran
    assert sorted(built for built, _, _ in out) == [False] * (n - 1) + [True]
    assert {data for _, data, _ in out} == {b"the-one-engine"}
    waited = [m for built, _, msgs in out if not built for m in msgs]
    assert waited and all("waiting for another process" in m for m in waited)
    leftovers = [p.name for p in (tmp_path / "engines").iterdir() if p.suffix not in (".plan", ".json", ".lock")]
    assert leftovers == []


def test_failed_build_leaves_nothing_and_keeps_the_old_engine(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def boom() -> bytes:
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cache.get_or_build(META, boom)
    assert not list(tmp_path.glob("*.plan")) and not list(tmp_path.glob("*.json"))
    good = cache.get_or_build(META, lambda: b"good")
    with pytest.raises(RuntimeError):
        cache.get_or_build(META, boom, force=True)
    engine, reason = cache.check(META)
    assert engine is not None and reason is None and good.plan_path.read_bytes() == b"good"
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def _rebuild_reason(cache: EngineCache) -> str:
    messages: list[str] = []
    rebuilt = cache.get_or_build(META, lambda: b"fresh", log=messages.append)
    assert rebuilt.built and rebuilt.plan_path.read_bytes() == b"fresh"
    assert len(messages) == 1 and messages[0].endswith("; rebuilding")
    assert cache.check(META)[0] is not None  # valid again
    return messages[0]


def test_edited_plan_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    eng = cache.get_or_build(META, lambda: b"original")
    eng.plan_path.write_bytes(b"tampered")
    assert cache.check(META)[0] is None
    assert "sha256" in _rebuild_reason(cache)


def test_foreign_metadata_is_rebuilt(tmp_path: Path) -> None:
    # metadata of another GPU copied under this key's name: never loaded
    cache = EngineCache(tmp_path)
    cache.get_or_build(META, lambda: b"original")
    meta_json = tmp_path / f"{META.key()}.json"
    record = json.loads(meta_json.read_text())
    record["meta"]["gpu_name"] = "NVIDIA A100-SXM4-40GB"
    meta_json.write_text(json.dumps(record))
    reason = _rebuild_reason(cache)
    assert "metadata does not match" in reason and "gpu_name" in reason


def test_wrong_recorded_key_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.get_or_build(META, lambda: b"original")
    meta_json = tmp_path / f"{META.key()}.json"
    record = json.loads(meta_json.read_text())
    record["key"] = "0" * 20
    meta_json.write_text(json.dumps(record))
    assert "recorded key" in _rebuild_reason(cache)


@pytest.mark.parametrize("damage", ["no-json", "bad-json", "no-plan", "old-format"])
def test_damaged_entries_are_rebuilt(tmp_path: Path, damage: str) -> None:
    cache = EngineCache(tmp_path)
    eng = cache.get_or_build(META, lambda: b"original")
    meta_json = tmp_path / f"{META.key()}.json"
    if damage == "no-json":
        meta_json.unlink()
        expected = "plan without metadata"
    elif damage == "bad-json":
        meta_json.write_text("{not json")
        expected = "unreadable metadata"
    elif damage == "no-plan":
        eng.plan_path.unlink()
        expected = "metadata without plan"
    else:
        record = json.loads(meta_json.read_text())
        record["format"] = 0
        meta_json.write_text(json.dumps(record))
        expected = "cache format"
    assert expected in _rebuild_reason(cache)


def test_nothing_cached_builds_silently(tmp_path: Path) -> None:
    messages: list[str] = []
    EngineCache(tmp_path).get_or_build(META, lambda: b"x", log=messages.append)
    assert messages == []


def test_find_covering_reuses_a_wider_engine(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    wide = replace(META, min_batch=1, opt_batch=16, max_batch=16)
    near = replace(META, min_batch=1, opt_batch=4, max_batch=8)
    cache.get_or_build(wide, lambda: b"wide")
    cache.get_or_build(near, lambda: b"near")
    want = replace(META, min_batch=1, opt_batch=4, max_batch=4)
    found = cache.find_covering(want, 4)
    assert found is not None and found.meta == near  # closest opt batch wins
    assert cache.find_covering(want, 12).meta == wide
    assert cache.find_covering(want, 32) is None  # nothing covers it
    assert cache.find_covering(replace(want, precision="fp32"), 4) is None
    assert cache.find_covering(replace(want, trt_version="9.0"), 4) is None
    (tmp_path / f"{near.key()}.plan").write_bytes(b"tampered")  # invalid entries are skipped
    assert cache.find_covering(want, 4).meta == wide


def test_unwritable_cache_dir_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="--cache-dir"):
        EngineCache(blocker / "engines").get_or_build(META, lambda: b"x")
