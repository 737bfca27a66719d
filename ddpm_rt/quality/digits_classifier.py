"""A small CNN digit classifier on the 16×16 digits training split; its penultimate layer
(64 ReLU features) is the feature space of the digits Fréchet distance.

Shipped as safetensors + JSON in assets/digits_classifier/ (no pickle).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_rt.errors import ConfigError, SourceError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier"
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """[B, 1, 16, 16] in [-1, 1] → logits [B, 10]; ``features`` gives the 64-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 16, 8, 8)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 32, 4, 4)
        return F.relu(self.fc(h.flatten(1)))  # (B, 64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _shift(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random ±1 pixel translation per image (pads with the background value -1)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + 16, dx : dx + 16]


def train_classifier(steps: int = 1500, batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> tuple[DigitsClassifier, dict]:
    """Train on the digits16 training split; returns the model and {held-out accuracy, ...}."""
    from ddpm_rt.datasets import load_dataset

    ds = load_dataset("digits16")
    assert ds.train_labels is not None and ds.heldout_labels is not None
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(ds.train), torch.from_numpy(ds.train_labels)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        loss = F.cross_entropy(model(_shift(x[idx], gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.inference_mode():
        pred = model(torch.from_numpy(ds.heldout)).argmax(1).numpy()
    acc = float(np.mean(pred == ds.heldout_labels))
    info = {"heldout_accuracy": round(acc, 4), "steps": steps, "batch_size": batch_size, "lr": lr,
            "seed": seed, "final_loss": round(float(loss.item()), 5), "feature_dim": FEATURE_DIM,
            "features": "ReLU output of fc (penultimate layer)"}
    return model, info


def save_classifier(model: DigitsClassifier, info: dict, out: Path = ASSET_DIR) -> None:
    from ddpm_rt.weights import save_json, save_tensors

    save_tensors(model.state_dict(), out / "model.safetensors")
    save_json(info, out / "config.json")


@functools.lru_cache(maxsize=1)
def load_classifier() -> DigitsClassifier:
    """The shipped classifier in eval mode."""
    from ddpm_rt.weights import load_weights

    path = ASSET_DIR / "model.safetensors"
    if not path.is_file():
        raise SourceError(f"the digits classifier weights are missing ({path}); reinstall ddpm-rt")
    model = DigitsClassifier()
    load_weights(model, path)
    return model.eval()


def classifier_info() -> dict:
    path = ASSET_DIR / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _as_images(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1:] != (1, 16, 16):
        raise ConfigError(f"digits samples must be [N, 1, 16, 16] (or [N, 16, 16]), got shape {np.shape(images)}")
    if not np.all(np.isfinite(a)):
        raise ConfigError("digits samples contain NaN or inf")
    return np.ascontiguousarray(a)


def features_and_probs(images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 64] float64, class probabilities [N, 10]) of images in [-1, 1]."""
    model = load_classifier()
    x = _as_images(images)
    feats, probs = [], []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            f = model.features(torch.from_numpy(x[i : i + batch]))
            feats.append(f.double().numpy())
            probs.append(torch.softmax(model.head(f), dim=1).double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


if __name__ == "__main__":  # python -m ddpm_rt.quality.digits_classifier: retrain the shipped classifier
    torch.set_num_threads(2)
    m, meta = train_classifier()
    save_classifier(m, meta)
    print(json.dumps(meta))
