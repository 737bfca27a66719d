"""The DDPM CIFAR-10 U-Net configuration (Ho et al. 2020) as a diffusers DDIM pipeline folder,
exported to a ddpm-rt bundle with the project's own exporter (as `ddpm-rt export` does).

Random weights (seeded): speed does not depend on training.
35.7M parameters: sample_size 32, block_out_channels (128, 256, 256, 256), layers_per_block 2,
single-head attention at 16x16 (AttnDownBlock2D / AttnUpBlock2D), linear betas 1e-4..0.02,
T = 1000. Every field is the one google/ddpm-cifar10-32 publishes in its unet/config.json
(attention_head_dim null = one head over all channels, as in Ho et al.; downsample_padding 0,
flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6); diffusers' constructor defaults differ
(32 heads of 8 channels, eps 1e-5), so they are spelled out here.
"""

from __future__ import annotations

import os
from pathlib import Path

UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "center_input_sample": False,
}
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                    "beta_schedule": "linear", "clip_sample": True}


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
    from cifar10_brief_training import train_folder

    folder = work_dir() / f"cifar10-ddpm-unet-hf-seed{seed}-trained{steps}"
    if not (folder / "unet" / "config.json").is_file():
        train_folder(pipeline_folder(seed), folder, steps, seed=seed)
    return folder


def cifar10_source(seed: int = 0, trained_steps: int = 0):
    """(ModelSource, parameter count): the diffusers folder (random weights, or briefly trained
    when `trained_steps` > 0) exported once to a bundle beside it."""
    from ddpm_rt.exporter.bundle import load_bundle
    from ddpm_rt.exporter.export import ExportOptions, export_bundle
    from ddpm_rt.exporter.sources import resolve_export_source
    from ddpm_rt.source import ModelSource

    folder = trained_folder(seed, trained_steps) if trained_steps else pipeline_folder(seed)
    src = resolve_export_source(str(folder))
    bundle = folder.parent / f"{folder.name}.bundle"
    try:
        load_bundle(bundle)
    except Exception:  # noqa: BLE001 - absent or stale: export (verifies parity vs eager)
        export_bundle(src, bundle, ExportOptions(trajectory_steps=0))
    params = sum(p.numel() for p in src.module.parameters())
    module = src.module
    return ModelSource(f"diffusers:{folder.name}", src.spec, lambda: module, bundle=bundle), params
