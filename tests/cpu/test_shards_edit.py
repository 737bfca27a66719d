"""Sharded editing (`sample --num N --init STACK|DIR`): sample i edits image i from its own noise
stream, so its bytes do not depend on shard size, micro-batch, executor or resume point, and equal a
single-run edit of image i; the inputs' hashes guard a resume; bad inputs fail in one line before
any model work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_rt.editing import make_edit
from ddpm_rt.errors import ConfigError
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.shards import (
    LocalExecutor,
    ShardSampler,
    engine,
    iter_shards,
    run_shards,
    sample_generator,
)
from ddpm_rt.shards.edit_inputs import shard_edit
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.helpers.shards import JOB, TINY_SPEC, export_tiny_bundle, job_for, read_all

NUM = 20  # not a multiple of the micro-batch 8: the last micro-batch is padded
SHAPE = TINY_SPEC.sample_shape  # (1, 8, 8), data range [-1, 1]
EDITS = {  # the settings of each kind of edit (JOB: ddpm, 10 steps, seed 7, micro-batch 8)
    "sdedit": {"strength": 0.6},
    "inpaint": {"mask": True},
    "repaint": {"mask": True, "sampler": "ddim", "eta": 1.0, "repaint": (2, 2)},
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("shards-edit") / "tiny")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (NUM, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    return (np.random.default_rng(1).random((NUM, *SHAPE)) < 0.5).astype(np.uint8)


def edit_job(bundle, images, masks, kind, **overrides):
    settings = dict(EDITS[kind])
    mask = masks if settings.pop("mask", False) else None
    return job_for(bundle, **{"num": NUM, "init": images, "mask": mask, **settings, **overrides})


@pytest.fixture(scope="module")
def references(bundle, images, masks, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each edit in one shard of 24 (micro-batch 8): the bytes every other layout must reproduce."""
    out = {}
    for kind in EDITS:
        d = tmp_path_factory.mktemp(f"ref-{kind}") / "out"
        run_shards(edit_job(bundle, images, masks, kind, shard_size=24), d, LocalExecutor())
        out[kind] = read_all(d)
    return out


# -- bytes per sample --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EDITS))
def test_edit_bytes_do_not_depend_on_shard_size_or_resume_point(bundle, images, masks, references, kind, tmp_path):
    out = tmp_path / "out"
    first = run_shards(edit_job(bundle, images, masks, kind, shard_size=8), out, LocalExecutor())
    assert first.computed == [0, 1, 2]
    assert read_all(out).tobytes() == references[kind].tobytes()
    (out / "shard-00001.npy").unlink()
    resumed = run_shards(edit_job(bundle, images, masks, kind, shard_size=8), out, LocalExecutor())
    assert resumed.skipped == [0, 2] and resumed.computed == [1]
    assert read_all(out).tobytes() == references[kind].tobytes()
    if kind != "sdedit":  # the known region is the input exactly
        known = masks.astype(bool)
        assert np.array_equal(references[kind][known], images[known])
    assert np.abs(references[kind] - images).max() > 0.1  # and the rest was edited


@pytest.mark.parametrize("kind", list(EDITS))
def test_edit_bytes_do_not_depend_on_the_micro_batch(bundle, images, masks, references, kind, tmp_path):
    """Every row of the loop is per sample, and the tiny graph's ORT kernels give the same bytes at
    batch 4 as at 8 (the micro-batch stays in the identity for kernels that would not)."""
    run_shards(edit_job(bundle, images, masks, kind, shard_size=4, micro_batch=4), tmp_path / "o", LocalExecutor())
    assert read_all(tmp_path / "o").tobytes() == references[kind].tobytes()


@pytest.mark.parametrize("kind", list(EDITS))
def test_sample_i_is_the_single_run_edit_of_image_i_with_its_own_stream(bundle, images, masks, references, kind):
    """A batch-1 run through the editing API (`Backend.sample(edit=)`): x_T — the z of the noised
    image — and every step's noise drawn from sample i's own generator."""
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime.backend import BackendOptions

    job = edit_job(bundle, images, masks, kind, shard_size=24)
    backend = open_backend("ort", load_bundle(bundle), batch=1, options=BackendOptions(threads=1))
    try:
        for i in (0, 9, NUM - 1):
            g = sample_generator(JOB["seed"], i)
            x_T = g.standard_normal((1, *SHAPE), dtype=np.float32)
            edit = make_edit(SHAPE, TINY_SPEC.data_range, 1, images[i],
                             masks[i] if "mask" in EDITS[kind] else None)
            single = backend.sample(job.plan, x_T, rng=g, edit=edit)
            assert single.tobytes() == references[kind][i : i + 1].tobytes(), i
    finally:
        backend.close()


def test_ray_gives_the_in_process_edit_bytes(bundle, images, masks, references, tmp_path):
    """Optional: the job (its images and masks with it) shipped to two Ray actors."""
    ray = pytest.importorskip("ray")
    from ddpm_rt.shards.ray_executor import RayExecutor

    owns = not ray.is_initialized()
    if owns:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(workers=2)
        run_shards(edit_job(bundle, images, masks, "repaint", shard_size=8), tmp_path / "out", executor)
    finally:
        if owns:
            ray.shutdown()
    assert executor.stats.workers == 2
    assert read_all(tmp_path / "out").tobytes() == references["repaint"].tobytes()


class _DeviceLike:
    """A numpy model behind a 'device' backend: it gets the noise as arrays (`step_noise`), as trt does."""

    name = "fake"

    def __init__(self, device: str) -> None:
        self.device = device

    def sample(self, plan, x_init, *, noise=None, rng=None, guidance=None, edit=None, allow_nonfinite=False):
        assert (noise is None) == (self.device == "cpu")
        # the model mixes neighbouring pixels, so the known region's noise reaches the generated one
        return sample_loop(lambda x, t: np.tanh(x + np.roll(x, 1, axis=-1)) * 0.3, plan, x_init, noise=noise,
                           rng=rng, edit=edit)

    def close(self) -> None:
        pass


def test_device_loops_get_the_masked_rows_noise_as_arrays(bundle, images, masks, monkeypatch):
    """Deterministic DDIM draws no noise for its steps, but an inpainting run does, for the known
    region of every row: the device path's noise array must hold those rows too."""
    job = edit_job(bundle, images, masks, "inpaint", sampler="ddim", eta=0.0, shard_size=24)
    assert not job.plan.noise_rows().any() and job.plan.noise_rows(masked=True).any()
    out = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setattr(engine, "open_shard_backend", lambda job, bundle_dir=None, d=device: _DeviceLike(d))
        out[device], _ = ShardSampler(job).compute(job.layout.shard(0))
    assert out["cpu"].tobytes() == out["cuda"].tobytes()
    assert len({row.tobytes() for row in out["cpu"]}) == NUM


def test_one_image_and_one_mask_for_all_equal_the_repeated_stacks(bundle, images, masks, tmp_path):
    one = job_for(bundle, num=16, shard_size=8, init=images[3], mask=masks[3, 0])  # mask as [H, W]
    run_shards(one, tmp_path / "one", LocalExecutor())
    stacked = job_for(bundle, num=16, shard_size=8, init=np.repeat(images[3:4], 16, 0),
                      mask=np.repeat(masks[3:4], 16, 0))
    run_shards(stacked, tmp_path / "stacked", LocalExecutor())
    a, b = read_all(tmp_path / "one"), read_all(tmp_path / "stacked")
    assert a.tobytes() == b.tobytes()
    assert len({row.tobytes() for row in a}) == 16  # one input, sixteen noise streams


# -- reading inputs --------------------------------------------------------------------


def test_a_directory_is_read_in_sorted_name_order_as_the_stack(tmp_path, images, masks):
    pixels = np.random.default_rng(2).integers(0, 256, (NUM, 8, 8), dtype=np.uint8)
    (tmp_path / "img").mkdir()
    (tmp_path / "m").mkdir()
    for i in reversed(range(NUM)):  # written out of order; names sort as the samples
        Image.fromarray(pixels[i]).save(tmp_path / "img" / f"img-{i:03d}.png")
        np.save(tmp_path / "m" / f"{i:03d}.npy", masks[i])
    (tmp_path / "img" / ".DS_Store").write_bytes(b"ignored")
    from_dir = shard_edit(SHAPE, (-1.0, 1.0), NUM, tmp_path / "img", tmp_path / "m")
    want = (pixels[:, None].astype(np.float32) / 255.0 * 2 - 1).astype(np.float32)
    from_stack = shard_edit(SHAPE, (-1.0, 1.0), NUM, want, masks)
    assert np.array_equal(from_dir.image, want) and np.array_equal(from_dir.mask, masks.astype(bool))
    assert from_dir.identity() == from_stack.identity()
    inverted = shard_edit(SHAPE, (-1.0, 1.0), NUM, want, masks, mask_means="generate")
    assert np.array_equal(inverted.mask, ~masks.astype(bool)) and inverted.identity() != from_stack.identity()


def _bad_inputs(tmp_path: Path, images: np.ndarray, masks: np.ndarray) -> dict[str, dict]:
    """name -> prepare_job overrides, each wrong in one way."""
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(NUM):
        np.save(d / f"{i:03d}.npy", images[i])
    few = tmp_path / "few"
    few.mkdir()
    np.save(few / "0.npy", images[0])
    stray = tmp_path / "stray"
    stray.mkdir()
    for i in range(NUM - 1):
        np.save(stray / f"{i:03d}.npy", images[i])
    (stray / "notes.txt").write_text("x")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for i in range(NUM):
        Image.fromarray(np.zeros((8, 9) if i == 4 else (8, 8), np.uint8)).save(wrong / f"{i:03d}.png")
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(NUM):
        Image.fromarray(np.full((8, 8), 128 if i == 2 else 255, np.uint8)).save(grey / f"{i:03d}.png")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for i in range(NUM):
        np.save(stacks / f"{i:03d}.npy", masks if i == 0 else masks[i])
    out_of_range, not_binary = images.copy(), masks.copy()
    out_of_range[5, 0, 0, 0] = 3.0
    not_binary[3, 0, 1, 1] = 2
    return {
        "stack length": ({"init": images[:5]}, "holds 5 images for --num 20"),
        "mask stack length": ({"init": images, "mask": masks[:7]}, "holds 7 masks for --num 20"),
        "directory count": ({"init": few}, "holds 1 files for --num 20"),
        "stray file": ({"init": stray}, "notes.txt is not a .png or .npy"),
        "row out of range": ({"init": out_of_range}, r"array\[5\]: .*outside the model's data range"),
        "row not binary": ({"init": images, "mask": not_binary}, r"array\[3\]: --mask must be binary"),
        "file of another size": ({"init": wrong}, r"wrong/004\.png is 9×8 pixels"),
        "grey mask file": ({"init": d, "mask": grey}, r"grey/002\.png is not binary"),
        "stack in a directory": ({"init": d, "mask": stacks},
                                 r"stacks/000\.npy has shape \[20, 1, 8, 8\]: a directory holds one sample"),
        "stack of other shape": ({"init": images[:, 0]}, r"\[20, 1, 8, 8\] for one per sample"),
        "mask without init": ({"mask": masks}, "--mask needs --init"),
        "strength without init": ({"strength": 0.5}, "--strength needs --init"),
        "strength that runs no step": ({"init": images, "strength": 0.01}, "runs no step"),
    }


def test_bad_inputs_fail_in_one_line_before_any_model_work(bundle, images, masks, tmp_path, monkeypatch):
    import ddpm_rt.prepare

    def no_model_work(*a, **k):
        raise AssertionError("the inputs should have been refused before choosing a backend")

    monkeypatch.setattr(ddpm_rt.prepare, "choose_backend", no_model_work)
    for name, (overrides, needle) in _bad_inputs(tmp_path, images, masks).items():
        with pytest.raises(ConfigError, match=needle) as e:
            job_for(bundle, **{"num": NUM, **overrides})
        assert "\n" not in str(e.value), name


# -- resume guard ------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["image", "mask", "no edit", "edit on a noise run"])
def test_resume_with_other_inputs_is_refused_in_one_line(bundle, images, masks, tmp_path, change):
    out = tmp_path / "out"
    other_images, other_masks = images.copy(), masks.copy()
    other_images[11, 0, 2, 2] *= 0.5
    other_masks[11, 0, 2, 2] ^= 1
    first = {"init": images, "mask": masks}
    second = {"image": {"init": other_images, "mask": masks}, "mask": {"init": images, "mask": other_masks},
              "no edit": {}, "edit on a noise run": first}[change]
    if change == "edit on a noise run":
        first = {}
    run_shards(job_for(bundle, num=NUM, **first), out, LocalExecutor())
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(ConfigError, match="other editing inputs") as e:
        run_shards(job_for(bundle, num=NUM, **second), out, LocalExecutor())
    assert "\n" not in str(e.value) and "--out" in str(e.value)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing touched
    manifest = json.loads((out / "manifest.json").read_text())
    assert ("edit" in manifest) == (change != "edit on a noise run")


def test_optional_identity_fields_survive_the_manifest_read_back(bundle, tmp_path):
    """Conditioning and editing inputs are written to the manifest and compared after reading it
    back (conditioning was once dropped on read, so a resume with other labels went unnoticed)."""
    from ddpm_rt.shards import ShardStore

    identity = job_for(bundle, num=8).identity()
    labelled = {**identity, "conditioning": {"sha256": {"class": "a" * 64}, "guidance_scale": 2.0,
                                             "guidance_rescale": 0.0}}
    ShardStore(tmp_path).open_manifest(labelled, 8)
    assert ShardStore(tmp_path).load_manifest().identity == labelled
    ShardStore(tmp_path).open_manifest(labelled, 8)  # the same run resumes
    other = {**labelled, "conditioning": {**labelled["conditioning"], "sha256": {"class": "b" * 64}}}
    for changed in (other, identity):
        with pytest.raises(ConfigError, match="other conditioning"):
            ShardStore(tmp_path).open_manifest(changed, 8)


# -- the command line (the README's sharded editing commands, as written) ----------------


README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_sharded_edit_commands_run_as_written(tmp_path):
    commands = [ln.strip() for ln in README.read_text().splitlines()
                if ln.strip().startswith("ddpm-rt sample digits --num") and "--init" in ln]
    assert len(commands) == 2, commands
    env = {"DDPM_RT_CACHE": str(tmp_path / "cache")}
    m = np.zeros((1, 16, 16), np.uint8)  # the README's top.npy and digits.npy, made as it makes them
    m[:, :8] = 1
    np.save(tmp_path / "top.npy", m)
    for command in ["ddpm-rt sample digits --batch 16 --out digits.npy", *commands]:
        proc = run_cli(*command.split()[1:], "--backend", "ort", cwd=tmp_path, env=env)
        assert proc.returncode == 0, (command, proc.stderr)
    digits = np.load(tmp_path / "digits.npy")
    inpainted = np.concatenate(list(iter_shards(tmp_path / "inpaint16")))
    np.testing.assert_array_equal(inpainted[..., :8, :], digits[..., :8, :])  # the known half, exactly
    assert len(list(iter_shards(tmp_path / "sdedit16"))) == 2
    proc = run_cli("sample", "digits", "--num", "12", "--init", "digits.npy", "--backend", "ort", "--out", "x",
                   cwd=tmp_path, env=env)
    assert_one_line_error(proc, "--init digits.npy holds 16 images for --num 12")
    assert not (tmp_path / "x").exists()
