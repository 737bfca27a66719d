"""A noise-aware digits classifier p(y | x_t, t) and its input gradient written out by hand.

Classifier guidance (Dhariwal & Nichol 2021) needs ∇x log p(y | x_t, t) at every step. ONNX
exporters trace a forward pass, not autograd, so `InputGradient.forward` computes the gradient
explicitly with the chain rule through layers whose backward is one op each:

    conv 3×3 (pad 1)        backward: conv_transpose2d with the same weight (the adjoint)
    + per-channel bias(t)   backward: identity (t is not differentiated)
    SiLU a·σ(a)             backward: σ(a)·(1 + a·(1 − σ(a)))
    avg-pool 2×2            backward: nearest 2× upsample, × 1/4
    spatial mean            backward: broadcast, × 1/(H·W)
    linear                  backward: the weight transposed
    log softmax(z)[y]       backward: onehot(y) − softmax(z)

Network (t: the train index of the `digits` schedule, float32 [B]):

    e  = SiLU(Linear(sin-emb(t)))                       (B, 128)   time path
    a1 = conv1(x)  + b1(e),  h1 = pool(SiLU(a1))        (B, 32, 8, 8)
    a2 = conv2(h1) + b2(e),  h2 = pool(SiLU(a2))        (B, 64, 4, 4)
    a3 = conv3(h2) + b3(e),  g  = mean(SiLU(a3))        (B, 64)
    z  = head(g)                                        (B, 10)

Weights ship as float16 safetensors + config.json in assets/noisy_digits_classifier/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_rt.errors import SourceError
from ddpm_rt.models.embeddings import SinusoidalEmbedding

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "noisy_digits_classifier"  # the shipped one
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
NUM_CLASSES = 10


class NoisyDigitsClassifier(nn.Module):
    """(x_t float32 [B, 1, 16, 16], t float32 [B]) → logits [B, 10]."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 64), emb_dim: int = 64,
                 time_dim: int = 128, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.config = {"in_channels": in_channels, "widths": list(widths), "emb_dim": emb_dim,
                       "time_dim": time_dim, "num_classes": num_classes}
        self.embed = SinusoidalEmbedding(emb_dim)
        self.time = nn.Linear(emb_dim, time_dim)
        self.conv1 = nn.Conv2d(in_channels, w1, 3, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1)
        self.b1, self.b2, self.b3 = nn.Linear(time_dim, w1), nn.Linear(time_dim, w2), nn.Linear(time_dim, w3)
        self.head = nn.Linear(w3, num_classes)

    def pre_activations(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a1, a2, a3): the three conv outputs plus their time biases, before SiLU."""
        e = F.silu(self.time(self.embed(t)))  # (B, time_dim)
        a1 = self.conv1(x) + self.b1(e)[:, :, None, None]  # (B, w1, H, W)
        a2 = self.conv2(F.avg_pool2d(F.silu(a1), 2)) + self.b2(e)[:, :, None, None]  # (B, w2, H/2, W/2)
        a3 = self.conv3(F.avg_pool2d(F.silu(a2), 2)) + self.b3(e)[:, :, None, None]  # (B, w3, H/4, W/4)
        return a1, a2, a3

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a3 = self.pre_activations(x, t)[2]
        return self.head(F.silu(a3).mean(dim=(2, 3)))  # (B, num_classes)


def _silu_grad(a: Tensor) -> Tensor:
    """d SiLU(a) / da = σ(a)·(1 + a·(1 − σ(a)))."""
    s = torch.sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


def _unpool(d: Tensor) -> Tensor:
    """The adjoint of 2×2 average pooling: each input pixel receives 1/4 of its cell's gradient."""
    return F.interpolate(d, scale_factor=2.0, mode="nearest") * 0.25


class InputGradient(nn.Module):
    """(x, t, class_labels int64 [B]) → ∇x log softmax(f(x, t))[y], float32 like x (chain rule by hand)."""

    def __init__(self, classifier: NoisyDigitsClassifier) -> None:
        super().__init__()
        self.f = classifier

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        f = self.f
        a1, a2, a3 = f.pre_activations(x, t)
        z = f.head(F.silu(a3).mean(dim=(2, 3)))  # (B, K)
        classes = torch.arange(z.shape[1], device=z.device)
        onehot = (class_labels[:, None] == classes[None, :]).to(z.dtype)  # (B, K)
        dz = onehot - torch.softmax(z, dim=1)  # d log softmax(z)[y] / dz
        dg = dz @ f.head.weight  # (B, w3)
        h, w = a3.shape[2], a3.shape[3]
        da3 = dg[:, :, None, None] * _silu_grad(a3) / float(h * w)  # (B, w3, H/4, W/4)
        da2 = _unpool(F.conv_transpose2d(da3, f.conv3.weight, padding=1)) * _silu_grad(a2)  # (B, w2, H/2, W/2)
        da1 = _unpool(F.conv_transpose2d(da2, f.conv2.weight, padding=1)) * _silu_grad(a1)  # (B, w1, H, W)
        return F.conv_transpose2d(da1, f.conv1.weight, padding=1)  # (B, C, H, W)


def autograd_input_gradient(classifier: nn.Module, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """The reference: ∇x log softmax(f(x, t))[y] by torch.autograd (summed over the batch: rows are independent)."""
    x = x.detach().requires_grad_(True)
    logp = torch.log_softmax(classifier(x, t), dim=1).gather(1, labels[:, None]).sum()
    (grad,) = torch.autograd.grad(logp, x)
    return grad


def read_config(directory: Path = ASSET_DIR) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise SourceError(f"{directory} holds no noisy classifier ({CONFIG_FILE} missing); train one with "
                          "`python -m ddpm_rt.train.noisy_classifier`")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None


def from_config(cfg: dict[str, Any]) -> NoisyDigitsClassifier:
    """An untrained classifier from its saved constructor config (config.json's ``config``)."""
    return NoisyDigitsClassifier(in_channels=cfg["in_channels"], widths=tuple(cfg["widths"]),
                                 emb_dim=cfg["emb_dim"], time_dim=cfg["time_dim"], num_classes=cfg["num_classes"])
