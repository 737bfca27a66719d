"""U-Net feature caching across steps (DeepCache, Ma et al. CVPR 2024): a U-Net cut at one skip branch.

A U-Net's level b (0 = full resolution) has a down half that makes its skips and an up half
that reads them. Cut at branch b:

    full     x, t          -> out, feature    the whole U-Net; `feature` is h entering up level b
                                              (after the upsample of level b + 1): all the deep work
    shallow  x, t, feature -> out             conv_in, down levels 0..b, up levels b..0, the head;
                                              `feature` stands in for everything deeper

Run the full graph at some steps and the shallow one in between, reusing the last full step's
feature: DeepCache's "cached" steps. Supported: the project's `UNet` (`ddpm_rt.models.unet`) and
diffusers' `UNet2DModel` (wrapped by `ddpm_rt.sources.diffusers`), cut at block granularity.

`patched_forward` is the reference the exporter and the tests check the shallow graph against:
the unmodified eager forward with one hook that swaps h at the cut for the cached feature, so it
shares nothing with the split code but the meaning of `branch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ddpm_rt.errors import ConfigError
from ddpm_rt.models.unet import UNet


def _inner(module: nn.Module) -> nn.Module:
    """The U-Net inside a source's wrapper (diffusers' DiffusersDenoiser holds it as `.unet`)."""
    inner = getattr(module, "unet", None)
    return inner if isinstance(inner, nn.Module) else module


def _is_diffusers(unet: nn.Module) -> bool:
    return type(unet).__name__ == "UNet2DModel" and hasattr(unet, "up_blocks")


def branches(module: nn.Module) -> int:
    """How many skip branches the U-Net has (valid branches: 0..branches - 1); ConfigError if not a U-Net."""
    unet = _inner(module)
    if isinstance(unet, UNet):
        return unet.levels
    if _is_diffusers(unet):
        return len(unet.down_blocks)
    raise ConfigError(f"--feature-cache needs a U-Net (ddpm_rt UNet or diffusers UNet2DModel), "
                      f"not {type(unet).__name__}; export without --feature-cache")


def check_branch(module: nn.Module, branch: int) -> nn.Module:
    """The inner U-Net, after checking `branch` and that the model can be cut."""
    n = branches(module)
    if not 0 <= branch < n:
        raise ConfigError(f"--feature-cache {branch}: this U-Net has branches 0..{n - 1} (0 = full resolution, "
                          f"the cheapest shallow graph)")
    unet = _inner(module)
    if isinstance(unet, UNet) and unet.class_embed is not None:
        raise ConfigError("--feature-cache supports unconditional U-Nets only so far (this one embeds a class)")
    if _is_diffusers(unet):
        if unet.class_embedding is not None:
            raise ConfigError("--feature-cache does not support class-conditional UNet2DModels yet")
        if any(hasattr(b, "skip_conv") for b in (*unet.down_blocks, *unet.up_blocks)):
            raise ConfigError("--feature-cache does not support UNet2DModels with Skip* blocks (skip_sample)")
    return unet


# -- the project's UNet --------------------------------------------------------------------


def _own_forward(u: UNet, x: Tensor, t: Tensor, branch: int, feature: Tensor | None) -> tuple[Tensor, Tensor]:
    """UNet.forward cut at `branch` (`UNet.walk`): with `feature` the shallow path, else the full one."""
    out, cut = u.walk(x, t, None, branch, feature)
    assert cut is not None  # check_branch keeps `branch` within the U-Net's levels
    return out, cut


# -- diffusers UNet2DModel -----------------------------------------------------------------


def _diffusers_forward(u: nn.Module, x: Tensor, t: Tensor, branch: int,
                       feature: Tensor | None) -> tuple[Tensor, Tensor]:
    """UNet2DModel.forward (diffusers 0.2x-0.4x, no class labels, no Skip* blocks), cut at `branch`."""
    shallow = feature is not None
    if u.config.center_input_sample:
        x = 2 * x - 1.0
    timesteps = t * torch.ones(x.shape[0], dtype=t.dtype, device=t.device)
    emb = u.time_embedding(u.time_proj(timesteps).to(dtype=u.dtype))
    sample = u.conv_in(x)
    res: tuple[Tensor, ...] = (sample,)
    for k, block in enumerate(u.down_blocks):
        sample, states = block(hidden_states=sample, temb=emb)
        res += states
        if shallow and k == branch:
            if getattr(block, "downsamplers", None) is not None:
                res = res[:-1]  # the downsampled state feeds the next level only
            break
    if not shallow and u.mid_block is not None:
        sample = u.mid_block(sample, emb)
    n = len(u.up_blocks)
    cut = sample
    for j, block in enumerate(u.up_blocks):
        level = n - 1 - j  # the down block this up block mirrors
        if level > branch and shallow:
            continue
        if level == branch:
            if shallow:
                sample = feature
            cut = sample
        states, res = res[-len(block.resnets):], res[:-len(block.resnets)]
        sample = block(sample, states, emb)
    sample = u.conv_out(u.conv_act(u.conv_norm_out(sample)))
    if u.config.time_embedding_type == "fourier":
        sample = sample / timesteps.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
    return sample, cut


def _forward(unet: nn.Module, x: Tensor, t: Tensor, branch: int, feature: Tensor | None) -> tuple[Tensor, Tensor]:
    if isinstance(unet, UNet):
        return _own_forward(unet, x, t, branch, feature)
    return _diffusers_forward(unet, x, t, branch, feature)


class FullWithFeature(nn.Module):
    """forward(x, t) -> (out, feature): the whole U-Net, also returning h at the cut."""

    def __init__(self, module: nn.Module, branch: int) -> None:
        super().__init__()
        self.unet = check_branch(module, branch)
        self.branch = branch

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        out, feature = _forward(self.unet, x, t, self.branch, None)
        return out.to(torch.float32), feature.to(torch.float32)


class Shallow(nn.Module):
    """forward(x, t, feature) -> out: only the levels 0..branch, with the deep part given as `feature`."""

    def __init__(self, module: nn.Module, branch: int) -> None:
        super().__init__()
        self.unet = check_branch(module, branch)
        self.branch = branch

    def forward(self, x: Tensor, t: Tensor, feature: Tensor) -> Tensor:
        return _forward(self.unet, x, t, self.branch, feature)[0].to(torch.float32)


def split(module: nn.Module, branch: int) -> tuple[FullWithFeature, Shallow]:
    """(full-with-feature, shallow) modules for `module` cut at `branch` (eval mode, shared weights)."""
    return FullWithFeature(module, branch).eval(), Shallow(module, branch).eval()


# -- the reference: the eager forward with the deep part's result swapped for a cached one --


@contextlib.contextmanager
def patched_forward(module: nn.Module, branch: int, feature: Tensor) -> Iterator[None]:
    """While active, ``module(x, t)`` runs unmodified except that h entering up level `branch` is
    replaced by `feature` (the deep half still runs; its result is discarded), as DeepCache's
    cached steps see it."""
    unet = check_branch(module, branch)
    if isinstance(unet, UNet):
        # the first up ResBlock of level b reads cat([h, skip]); swap its first C_h channels
        target = unet.up[(unet.levels - 1 - branch) * (unet.num_res_blocks + 1)]
        c = feature.shape[1]

        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            hs = args[0]
            return (torch.cat([feature, hs[:, c:]], dim=1), *args[1:])
    else:
        target = unet.up_blocks[len(unet.up_blocks) - 1 - branch]

        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (feature, *args[1:])

    handle = target.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
