"""The DDPM CIFAR-10 U-Net configuration (Ho et al. 2020) as a diffusers DDIM pipeline folder,
exported to a ddpm-rt bundle with the project's own exporter (as `ddpm-rt export` does).

Random weights (seeded): speed does not depend on training.
35.7M parameters: sample_size 32, block_out_channels (128, 256, 256, 256), layers_per_block 2,
single-head attention at 16x16 (AttnDownBlock2D / AttnUpBlock2D), linear betas 1e-4..0.02,
T = 1000: google/ddpm-cifar10-32's published config (ddpm_rt/models/ddpm_cifar10.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpm_rt.models.ddpm_cifar10 import DDPM_CIFAR10_SCHEDULER, DDPM_CIFAR10_UNET

UNET_CONFIG = DDPM_CIFAR10_UNET
SCHEDULER_CONFIG = DDPM_CIFAR10_SCHEDULER


def work_dir() -> Path:
    """Large intermediate files (143 MB of weights, the ONNX) live outside the repository."""
    root = Path(os.environ.get("DDPM_RT_CACHE", Path.home() / ".cache" / "ddpm-rt"))
    return root / "bench-work"


def pipeline_folder(seed: int = 0) -> Path:
    """A diffusers DDIMPipeline folder (unet/ + scheduler/) with seeded random weights, made once."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    folder = work_dir() / f"cifar10-ddpm-unet-hf-seed{seed}"
    if (folder / "unet" / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG).eval()
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG)).save_pretrained(folder)
    return folder


def trained_folder(seed: int = 0, steps: int = 300) -> Path:
    """The random folder after `steps` brief DDPM training steps (cifar10_brief_training), made once."""
    from benchmarks.cifar10_brief_training import train_folder

    folder = work_dir() / f"cifar10-ddpm-unet-hf-seed{seed}-trained{steps}"
    if not (folder / "unet" / "config.json").is_file():
        train_folder(pipeline_folder(seed), folder, steps, seed=seed)
    return folder


def cifar10_source(seed: int = 0, trained_steps: int = 0):
    """(ModelSource, parameter count): the diffusers folder (random weights, or briefly trained
    when `trained_steps` > 0) exported once to a bundle beside it."""
    from dataclasses import replace

    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.exporter.export import ExportOptions, export_bundle
    from ddpm_rt.sources import resolve_source

    folder = trained_folder(seed, trained_steps) if trained_steps else pipeline_folder(seed)
    src = resolve_source(str(folder))
    module = src.load_module()  # one module for every contender
    src = replace(src, load_module=lambda: module)
    bundle = folder.parent / f"{folder.name}.bundle"
    try:
        load_bundle(bundle)
    except Exception:  # noqa: BLE001 - absent or stale: export (verifies parity vs eager)
        export_bundle(src, bundle, ExportOptions(trajectory_steps=0))
    params = sum(p.numel() for p in module.parameters())
    return replace(src, bundle=bundle), params
