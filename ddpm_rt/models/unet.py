"""Seed 001's DDPM U-Net: residual blocks, GroupNorm(8), self-attention at one resolution,
sinusoidal timestep embedding; predicts epsilon. Sized for 16×16 digits on a CPU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_rt.models.embeddings import TimestepMLP


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """GN → SiLU → conv, add the projected time embedding, GN → SiLU → dropout → conv, plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, as plain matmul + softmax (exports to ONNX)."""

    def __init__(self, ch: int, heads: int = 1) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"channels {ch} not divisible by heads {heads}")
        self.heads = heads
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w)  # (B, 3, heads, d, HW)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, HW)
        attn = torch.softmax(torch.matmul(q.transpose(2, 3), k) / math.sqrt(d), dim=-1)  # (B, heads, HW, HW)
        out = torch.matmul(v, attn.transpose(2, 3)).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)


class UNet(nn.Module):
    """eps = UNet(x_t, t[, class_labels]): x float32 [B, C, H, W], t float32 [B] (train index), output [B, C, H, W].

    With ``num_classes`` set, the model is class-conditional: an ``nn.Embedding(num_classes + 1,
    emb_dim)`` is added to the time embedding, and id ``num_classes`` is the null ("no label") class
    trained by label dropout, so one network gives both halves of classifier-free guidance.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_levels: tuple[int, ...] | list[int] = (1,),  # level index 0 = full resolution
        heads: int = 1,
        dropout: float = 0.0,
        mid_attention: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        emb_dim = 4 * base_channels
        self.time = TimestepMLP(base_channels, emb_dim)
        self.num_classes = num_classes
        # index num_classes = the null label; absent for unconditional models (state dict unchanged)
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mult]

        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_ch = [base_channels]
        ch = base_channels
        for level, out_ch in enumerate(chans):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, out_ch, emb_dim, dropout))
                self.down_attn.append(SelfAttention(out_ch, heads) if level in attn_levels else nn.Identity())
                ch = out_ch
                skip_ch.append(ch)
            if level < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_ch.append(ch)

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = SelfAttention(ch, heads) if mid_attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)

        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(chans))):
            out_ch = chans[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_ch.pop(), out_ch, emb_dim, dropout))
                self.up_attn.append(SelfAttention(out_ch, heads) if level in attn_levels else nn.Identity())
                ch = out_ch
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        assert not skip_ch
        self.num_res_blocks = num_res_blocks
        self.levels = len(chans)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.walk(x, t, class_labels)[0]

    def walk(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None, branch: int | None = None,
             feature: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The forward pass, and h entering up level `branch` (feature caching's cut; None without a
        branch). With `feature` (that h from an earlier step) only the shallow path runs: the down
        levels up to `branch`, then the up levels from `branch` on that feature."""
        emb = self.time(t)  # (B, emb_dim)
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional: pass class_labels (int64 [B]; "
                                 f"{self.num_classes} = no label)")
            emb = emb + self.class_embed(class_labels)  # (B, emb_dim)
        elif class_labels is not None:
            raise ValueError("this UNet is unconditional (num_classes unset) but got class_labels")
        shallow = feature is not None
        h = self.conv_in(x)
        skips = [h]
        i = 0
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = self.down_attn[i](self.down[i](h, emb))
                skips.append(h)
                i += 1
            if shallow and level == branch:
                break  # the downsample of level `branch` only feeds deeper levels
            if level < self.levels - 1:
                h = self.downsample[level](h)  # (B, C, H/2, W/2)
                skips.append(h)
        if not shallow:
            h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        i = 0
        cut = None
        for n, level in enumerate(reversed(range(self.levels))):
            if shallow and level > branch:  # type: ignore[operator]
                i += self.num_res_blocks + 1
                continue
            if level == branch:
                h = feature if shallow else h  # (B, C_b', H_b, W_b) cached at the last full step
                cut = h
            for _ in range(self.num_res_blocks + 1):
                h = self.up_attn[i](self.up[i](torch.cat([h, skips.pop()], dim=1), emb))
                i += 1
            if level > 0:
                h = self.upsample[n](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h), cut
