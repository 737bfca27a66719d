"""Seed 002's denoiser for 2-D data: an MLP whose every hidden layer adds its own
projection of a sinusoidal timestep embedding (DenoisingDiffusion.jl's ConditionalChain)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_rt.models.embeddings import SinusoidalEmbedding


class ConditionalMLP(nn.Module):
    """eps = f(x_t, t): x float32 [B, D], t float32 [B] (train index), output [B, D].

    Layer l: h = relu(W_l·h + E_l(sin_emb(t))), as ``Parallel(.+, Dense, Chain(SinusoidalPositionEmbedding, Dense))``.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3) -> None:
        super().__init__()
        self.embed = SinusoidalEmbedding(hidden)
        self.dense = nn.ModuleList(
            [nn.Linear(dim if i == 0 else hidden, hidden) for i in range(layers)]
        )
        self.time = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t)  # (B, hidden)
        h = x  # (B, D)
        for dense, time in zip(self.dense, self.time, strict=True):
            h = F.relu(dense(h) + time(emb))  # (B, hidden)
        return self.out(h)  # (B, D)
