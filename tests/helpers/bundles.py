"""Helpers shared by the export / bundle tests."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from ddpm_rt.sources.source import ModelSource, SourceKind
from ddpm_rt.spec import DiffusionSpec
from tests.helpers.sources import weights_key


def save_weights(module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def assert_nothing_written(out: Path) -> None:
    """No bundle at `out` and no temporary sibling left behind."""
    assert not out.exists(), f"{out} was written"
    if out.parent.is_dir():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers == [], leftovers


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "ddpm_rt.json").read_text())


def make_diffusers_folders(root: Path) -> tuple[Path, Path]:
    """A small random UNet2DModel saved as a bare folder and as a DDPMPipeline (cosine, clip 1)."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    bare, pipe = root / "unet", root / "pipeline"
    unet.save_pretrained(bare)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              clip_sample=True, clip_sample_range=1.0)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(pipe)
    return bare, pipe


def call_main(capsys, *args: str):
    """Run `ddpm_rt.cli.main` in this process (same error mapping as the console script,
    without a fresh torch import per call); returns a CompletedProcess-like result."""
    import subprocess
    import sys
    from unittest import mock

    from ddpm_rt.cli import main

    capsys.readouterr()
    code = 0
    with mock.patch.object(sys, "argv", ["ddpm-rt", *args]):
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["ddpm-rt", *args], code, captured.out, captured.err)


def write_manifest(bundle: Path, spec, source: dict | None = None) -> Path:
    """Make `bundle`/denoiser.onnx (exported by a test itself) a loadable bundle: manifest + hash."""
    from ddpm_rt.bundle.contract import CONTRACT
    from ddpm_rt.bundle.manifest import MANIFEST_FILE, build_manifest, dumps, with_hash
    from ddpm_rt.fsutil import file_sha256

    m = build_manifest(source=source or {"kind": "module", "ref": "tests"}, spec=spec.to_dict(),
                       io=CONTRACT.to_dict(spec.sample_shape), opset=17, precision="fp32", graph={},
                       parity=None, exporter="torchscript", versions={})
    (bundle / MANIFEST_FILE).write_text(dumps(with_hash(m, file_sha256(bundle / "denoiser.onnx"))))
    return bundle


def export(module, sample_shape: tuple[int, ...], path: Path,
           names: tuple[str, str, str] = ("x", "t", "out")) -> Path:
    """A contract-shaped ONNX (x, t float32 [B]; out; dynamic batch) in `path`/denoiser.onnx."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, *sample_shape)
    t = torch.full((2,), 3.0)
    axes = {n: {0: "batch"} for n in names}
    torch.onnx.export(module.eval(), (x, t), str(path / "denoiser.onnx"), input_names=list(names[:2]),
                      output_names=[names[2]], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def make_source(name: str, path: Path, seed: int = 0, spec: DiffusionSpec | None = None) -> ModelSource:
    """An untrained built-in exported by hand into `path` (a bundle), with its module as well."""
    import torch

    from ddpm_rt.models.catalog import get_builtin

    torch.manual_seed(seed)
    model = get_builtin(name)
    module = model.build().eval()
    spec = spec or model.spec
    write_manifest(export(module, spec.sample_shape, path), spec)
    return ModelSource(SourceKind.MODULE, f"test:{name}", spec, weights_key(module), bundle=path,
                       load_module=lambda: module)


def make_class_unet(root: Path, class_embed_type: str | None = None, num_class_embeds: int | None = 11,
                    seed: int = 0, out_scale: float = 1.0, **config) -> Path:
    """A tiny random class-conditional UNet2DModel saved as a bare folder (3×8×8 samples).

    The class embedding is scaled up so the label visibly changes the output (an untrained
    table would barely move it, and a parity test would not see a swapped label); `out_scale`
    scales the output convolution (a random net's large gain makes long trajectories chaotic).
    """
    import warnings

    import torch

    warnings.simplefilter("ignore")
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    base = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": (16, 32),
            "layers_per_block": 1, "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8}
    unet = UNet2DModel(**{**base, **config}, class_embed_type=class_embed_type,
                       num_class_embeds=num_class_embeds if class_embed_type is None else None)
    with torch.no_grad():
        for p in (unet.class_embedding.parameters() if unet.class_embedding is not None else ()):
            p.mul_(4.0)
        unet.conv_out.weight.mul_(out_scale)
        unet.conv_out.bias.mul_(out_scale)
    path = root / f"unet-{class_embed_type or 'table'}"
    unet.save_pretrained(path)
    return path
