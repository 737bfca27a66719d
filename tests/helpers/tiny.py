"""Tiny denoisers for export tests, importable as `tests.helpers.tiny:make` etc."""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyConv(nn.Module):
    """eps = f(x [B, 1, 8, 8], t [B]): conv, GroupNorm, sinusoidal time, softmax attention."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.norm = nn.GroupNorm(4, channels)
        self.time = nn.Linear(16, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(8) / 8))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None] * self.freqs[None]  # (B, 8)
        emb = self.time(torch.cat([args.sin(), args.cos()], dim=1))  # (B, C)
        h = torch.nn.functional.silu(self.norm(self.inp(x))) + emb[:, :, None, None]  # (B, C, H, W)
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(h).reshape(b, 3, c, hh * ww).unbind(1)  # (B, C, HW) each
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, HW, HW)
        h = h + (v @ attn.transpose(1, 2)).reshape(b, c, hh, ww)
        return self.out(h)


class TinyMLP(nn.Module):
    """eps = f(x [B, 2], t [B])."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None] / 40.0], dim=1))


class DataDependent(nn.Module):
    """Branches on a tensor value: tracing bakes in one branch, so ONNX disagrees with eager."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if bool(t[0] > 20):
            return self.lin(x) * 2.0
        return self.lin(x)


def make() -> nn.Module:
    torch.manual_seed(0)
    return TinyConv()


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return TinyMLP()


def make_data_dependent() -> nn.Module:
    torch.manual_seed(0)
    return DataDependent()


def not_a_module() -> int:
    return 3


class NonFinite(nn.Module):
    """Returns inf once t drops below 20: a broken model whose samples must not be written."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = torch.where(t < 20, torch.full_like(t, float("inf")), torch.ones_like(t))
        return self.lin(x) * scale[:, None]


def make_nonfinite() -> nn.Module:
    torch.manual_seed(0)
    return NonFinite()


class TinyCondMLP(nn.Module):
    """eps = f(x [B, 2], t [B], class_labels int64 [B], style float32 [B, 3]): two conditioning inputs."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes + 1, 8)
        self.net = nn.Sequential(nn.Linear(3 + 8 + 3, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor,
                style: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None] / 1000.0, self.embed(class_labels), style], dim=1))


def make_cond_mlp() -> nn.Module:
    torch.manual_seed(0)
    return TinyCondMLP()
