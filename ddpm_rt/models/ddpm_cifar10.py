"""The DDPM CIFAR-10 denoiser configuration (Ho et al. 2020) in diffusers' terms, as
google/ddpm-cifar10-32 publishes it in unet/config.json and scheduler_config.json.

35.7M parameters, 6.22 GMAC per sample: channels 128/256/256/256, 2 residual blocks per level,
one attention head over all 256 channels at 16×16. diffusers' `UNet2DModel` constructor
defaults differ (32 heads of 8 channels, eps 1e-5, downsample padding 1, flipped sinusoids),
so every field is spelled out. Used by the GPU selfcheck and the CIFAR-10 benchmarks; no
diffusers import here.
"""

from __future__ import annotations

from typing import Any

DDPM_CIFAR10_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,  # one head over all channels
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

DDPM_CIFAR10_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
}
