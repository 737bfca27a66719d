"""Seed 000's "time_bar" U-Net: a small conv U-Net with a scalar step input that maps
(x_k, k) straight to the less noisy image x_{k+1} (prediction type "next_sample").

The time path is the seed's Dense → LayerNorm → ReLU on the scalar k (scaled to k/T inside
the graph); every block multiplies its conv features by a ReLU projection of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TimeBlock(nn.Module):
    """The seed's block: relu(conv_a(x))·relu(dense(t)) + conv_b(x), then LayerNorm, ReLU."""

    def __init__(self, in_ch: int, ch: int, t_dim: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.conv_b = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.dense = nn.Linear(t_dim, ch)
        self.norm = nn.GroupNorm(1, ch)  # LayerNorm over (C, H, W) of each sample

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        p = F.relu(self.conv_a(x)) * F.relu(self.dense(t_emb))[:, :, None, None]  # (B, ch, H, W)
        return F.relu(self.norm(self.conv_b(x) + p))


class InterpUNet(nn.Module):
    """x_{k+1} = f(x_k, k): x float32 [B, C, H, W] with H = W = 4·2^m, k float32 [B] in 0..T-1."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        t_dim: int = 192,
        bottleneck: int = 128,
        image_size: int = 16,
        num_steps: int = 16,
    ) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.time = nn.Sequential(nn.Linear(1, t_dim), nn.LayerNorm(t_dim), nn.ReLU())
        self.levels = 0
        size = image_size
        while size > 4:
            size //= 2
            self.levels += 1
        if size != 4 or self.levels < 1:
            raise ValueError(f"image_size must be 4·2^m with m >= 1, got {image_size}")
        c = channels
        self.down = nn.ModuleList(
            [TimeBlock(in_channels if i == 0 else c, c, t_dim) for i in range(self.levels + 1)]
        )
        self.bottom = 4
        self.mlp = nn.Sequential(
            nn.Linear(c * 16 + t_dim, bottleneck), nn.LayerNorm(bottleneck), nn.ReLU(),
            nn.Linear(bottleneck, 32 * 16), nn.LayerNorm(32 * 16), nn.ReLU(),
        )
        self.up = nn.ModuleList(
            [TimeBlock((32 if i == 0 else c) + c, c, t_dim) for i in range(self.levels + 1)]
        )
        self.out = nn.Conv2d(c, in_channels, 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t_emb = self.time(t.to(torch.float32)[:, None] / self.num_steps)  # (B, t_dim)
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h, t_emb)
            skips.append(h)
            if i < self.levels:
                h = F.max_pool2d(h, 2)
        # h: (B, c, 4, 4) → MLP over the flattened map and the time embedding
        h = self.mlp(torch.cat([h.flatten(1), t_emb], dim=1)).reshape(-1, 32, 4, 4)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), t_emb)
            if i < self.levels:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(h)
