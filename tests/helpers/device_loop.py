"""Shared by the device-loop tests (CPU here, CUDA in tests/gpu): a tiny denoiser and the plans."""

from __future__ import annotations

import numpy as np
import torch

from ddpm_rt.plan import SamplerSpec, build_plan
from ddpm_rt.schedule import ScheduleSpec

SHAPE = (1, 4, 4)


class TinyDenoiser(torch.nn.Module):
    """A deterministic nonlinear (x, t) -> out, so every coefficient of the update matters."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g) * 0.1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = torch.cos(t / 300.0).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return torch.tanh(self.conv(x)) * scale + 0.1 * x


def _host_model(module: torch.nn.Module):
    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x), torch.from_numpy(t)).numpy()

    return call


def _device_denoise(module: torch.nn.Module):
    def denoise(x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(module(x, t))

    return denoise


PLANS = {
    "ddpm-clip": (ScheduleSpec(kind="linear", num_train_timesteps=1000), SamplerSpec("ddpm", steps=20), (-1.0, 1.0)),
    "ddpm-noclip": (ScheduleSpec(kind="cosine", num_train_timesteps=40), SamplerSpec("ddpm", steps=40), None),
    "ddim-eta": (ScheduleSpec(kind="linear", num_train_timesteps=1000), SamplerSpec("ddim", steps=25, eta=0.7), None),
    "ddim-eta-clip": (
        ScheduleSpec(kind="linear", num_train_timesteps=1000),
        SamplerSpec("ddim", steps=25, eta=1.0, spacing="trailing"),
        (-1.0, 1.0),
    ),
    "ddim-det": (ScheduleSpec(kind="linear", num_train_timesteps=1000), SamplerSpec("ddim", steps=10), None),
    "geometric": (
        ScheduleSpec(kind="alpha_power", alpha=0.99, num_train_timesteps=500),
        SamplerSpec("geometric", steps=50, step_scale=1.5),
        None,
    ),
    # multistep: the history ring (H + 1 fixed slots)
    "dpmpp-2m-clip": (ScheduleSpec(kind="linear"), SamplerSpec("dpmpp-2m", steps=12, spacing="trailing"), (-1.0, 1.0)),
    "dpmpp-3m-karras": (ScheduleSpec(kind="cosine"), SamplerSpec("dpmpp-3m", steps=15, karras_sigmas=True), None),
    "unipc-clip": (ScheduleSpec(kind="linear"), SamplerSpec("unipc", steps=10, spacing="linspace"), (-1.0, 1.0)),
    "ipndm": (ScheduleSpec(kind="scaled_linear", beta_start=0.00085, beta_end=0.012),
              SamplerSpec("ipndm", steps=20, spacing="trailing"), None),
}


def _plan(name: str):
    schedule, sampler, clip = PLANS[name]
    pred = "epsilon"
    return build_plan(schedule, pred, sampler, clip)


class TinyConditional(torch.nn.Module):
    """(x, t, class_labels) -> out: TinyDenoiser plus a per-class offset (class 3 = the null label)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = TinyDenoiser()
        self.offset = torch.nn.Embedding(4, 1)
        with torch.no_grad():
            self.offset.weight.copy_(torch.tensor([[0.3], [-0.2], [0.5], [0.0]]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.base(x, t) + self.offset(labels).view(-1, 1, 1, 1) * (1.0 + x)


def host_call(module: torch.nn.Module):
    """(x, t, *cond) -> out on numpy arrays (a host backend's call)."""
    def call(x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x), torch.from_numpy(t), *map(torch.from_numpy, cond)).numpy()

    return call


def device_call(module: torch.nn.Module):
    def denoise(x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, *cond: torch.Tensor) -> None:
        out.copy_(module(x, t, *cond))

    return denoise
