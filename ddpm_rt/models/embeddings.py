"""Sinusoidal timestep embedding (Vaswani et al. 2017; Ho et al. 2020), shared by every denoiser.

Built from ``t`` inside ``forward`` with plain torch ops so it exports to ONNX:
``emb[:, i] = sin(t·w_i)``, ``emb[:, half + i] = cos(t·w_i)``, ``w_i = max_period^(-i/half)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Maps t float32 [B] to float32 [B, dim]; ``scale`` multiplies t first (e.g. 1000 for t in [0, 1])."""

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * scale, persistent=False)  # (half,)
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        args = t.to(torch.float32)[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


class TimestepMLP(nn.Module):
    """Sinusoidal embedding followed by Linear → SiLU → Linear (the usual DDPM time path)."""

    def __init__(self, dim: int, out_dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.embed = SinusoidalEmbedding(dim, scale=scale)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.embed(t))  # (B, out_dim)
