"""`ddpm-rt attach-classifier`: put a noise-aware classifier's gradient graph beside a bundle's denoiser."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def attach_classifier(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (from `ddpm-rt export`) to add the classifier to.")],
    classifier: Annotated[Path | None, typer.Option(help="Directory with the classifier's model.safetensors + "
                                                    "config.json. Default: the shipped noisy digits classifier.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest section as JSON on stdout.")] = False,
) -> None:
    """Export the classifier's input gradient into BUNDLE/classifier_grad.onnx, verified against torch autograd,
    and record it in the manifest: `ddpm-rt sample BUNDLE --class 3 --classifier-scale 4` then guides."""
    from ddpm_rt.exporter.classifier_export import attach_classifier as attach
    from ddpm_rt.models.noisy_classifier import ASSET_DIR

    section = attach(bundle, classifier or ASSET_DIR)
    if json_out:
        json.dump(section, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    acc = (section.get("accuracy") or {}).get("heldout_vs_t") or {}
    parity = section["parity"]
    typer.echo(f"attached {section['file']} to {bundle} ({section['labels']['num_classes']} classes; "
               f"gradient vs autograd: max rel err {parity['max_rel_err']:.1e}; held-out accuracy by t: "
               + ", ".join(f"t={t} {a:.0%}" for t, a in acc.items()) + ")")
