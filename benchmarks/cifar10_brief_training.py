"""A few hundred DDPM training steps for the CIFAR-10-size U-Net, so trajectory parity is
measured on weights that denoise instead of on a random (chaotic) network.

No CIFAR-10 can be downloaded here, so the data is scikit-learn's digits, bilinearly upscaled
to 32×32 and tinted with a random colour per image (3 channels in [-1, 1]). The loss is DDPM's
L_simple with the folder's own linear schedule (T = 1000); Adam at 2e-4 as in Ho et al.
This is not a CIFAR-10 model and its samples are not meant to be looked at: it only has to
predict noise well enough that the reverse loop contracts, as a trained model's does.

    .venv/bin/python -m benchmarks.cifar10_brief_training --steps 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def colour_digits32(seed: int) -> np.ndarray:
    """[N, 3, 32, 32] float32 in [-1, 1]: every digit at 32×32, tinted by a random RGB colour."""
    from sklearn.datasets import load_digits

    from ddpm_rt.datasets import upscale_digits

    gray = (upscale_digits(load_digits().images, 32) + 1.0) / 2.0  # [N, 1, 32, 32] in [0, 1]
    tint = np.random.default_rng(seed).uniform(0.2, 1.0, (gray.shape[0], 3, 1, 1))
    return (gray * tint * 2.0 - 1.0).astype(np.float32)


def train_folder(random_folder: Path, out: Path, steps: int, batch: int = 8, seed: int = 0,
                 log=print) -> dict:
    """Train the UNet of `random_folder` (a DDIMPipeline folder) for `steps` steps; save to `out`."""
    import torch
    from diffusers import DDIMPipeline

    torch.manual_seed(seed)
    pipe = DDIMPipeline.from_pretrained(random_folder)
    unet, sched = pipe.unet.train(), pipe.scheduler
    abar = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float32)
    data = torch.from_numpy(colour_digits32(seed))
    opt = torch.optim.Adam(unet.parameters(), lr=2e-4)
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        x0 = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        t = torch.randint(0, abar.numel(), (batch,), generator=gen)
        z = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * z
        loss = torch.nn.functional.mse_loss(unet(xt, t).sample, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps:
            rate = (time.perf_counter() - t0) / step
            log(f"train {step}/{steps}: loss {np.mean(losses[-25:]):.4f} "
                f"({rate:.2f} s/step, {rate * (steps - step):.0f} s left)")
    unet.eval()
    tmp = out.with_name(out.name + ".tmp")
    pipe.save_pretrained(tmp)
    info = {"steps": steps, "batch": batch, "seed": seed, "lr": 2e-4, "data": "sklearn digits 32x32, random tint",
            "loss_first_25": float(np.mean(losses[:25])), "loss_last_25": float(np.mean(losses[-25:])),
            "wall_s": time.perf_counter() - t0}
    (tmp / "brief_training.json").write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(out)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from benchmarks.bench_cifar10_model import trained_folder

    print(trained_folder(args.seed, args.steps))


if __name__ == "__main__":
    main()
