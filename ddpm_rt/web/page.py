"""The page `ddpm-rt web` serves (examples/web/) and the onnxruntime-web it runs, from npm.

The page's files live in the source tree, beside the package (an editable install, the
README's set-up); `--page DIR` points elsewhere. onnxruntime-web is pinned in the page's
package.json and package-lock.json and installed with `npm ci` into the page's
node_modules the first time it is missing (once, under a lock).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ddpm_rt
from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import LogFn, cache_root, file_lock

PAGE_FILES = ("index.html", "app.js", "worker.js", "package.json", "package-lock.json")
ORT_PACKAGE = "onnxruntime-web"
ORT_ENTRY = "ort.min.mjs"  # WebGPU (JSEP) + WebAssembly in one build; imported by worker.js
NPM_TIMEOUT_S = 900


def default_page_dir() -> Path:
    """examples/web of the source tree this package was installed from."""
    return Path(ddpm_rt.__file__).resolve().parent.parent / "examples" / "web"


@dataclass(frozen=True)
class Page:
    root: Path  # index.html, app.js, worker.js, ...
    ort_dist: Path  # node_modules/onnxruntime-web/dist
    ort_version: str


def _pinned_version(root: Path) -> str:
    try:
        return str(json.loads((root / "package.json").read_text())["dependencies"][ORT_PACKAGE])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{root / 'package.json'} does not pin {ORT_PACKAGE}; restore it from the "
                          "ddpm-rt source tree (examples/web)") from None


def _installed_version(root: Path) -> str | None:
    try:
        return str(json.loads((root / "node_modules" / ORT_PACKAGE / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def find_page(page_dir: Path | None = None) -> Path:
    """The page directory, checked: it holds the page's files."""
    root = Path(page_dir) if page_dir is not None else default_page_dir()
    missing = [f for f in PAGE_FILES if not (root / f).is_file()]
    if missing:
        where = "--page" if page_dir is not None else "the ddpm-rt source tree's examples/web"
        raise ConfigError(f"{root} is not the ddpm-rt web page (no {', '.join(missing)}); {where} must hold "
                          "it: install ddpm-rt from a source checkout (pip install -e .) or pass "
                          "--page path/to/ddpm-rt/examples/web")
    return root


def ensure_page(page_dir: Path | None = None, log: LogFn | None = None) -> Page:
    """The page and its onnxruntime-web, installed with `npm ci` when missing or of another version."""
    root = find_page(page_dir)
    pinned = _pinned_version(root)
    if _installed_version(root) != pinned:
        npm = shutil.which("npm")
        if npm is None:
            raise ConfigError(f"the page needs {ORT_PACKAGE} {pinned} from npm, and npm is not installed: "
                              f"install Node.js and npm, then run `npm ci` in {root}")
        # the lock lives in the cache: `npm ci` removes node_modules, and the page's folder stays clean
        lock = cache_root() / "web" / f".npm-ci-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.lock"
        with file_lock(lock, log=log, what=f"installing {ORT_PACKAGE} in {root}"):
            if _installed_version(root) != pinned:
                if log is not None:
                    log(f"installing {ORT_PACKAGE} {pinned} (npm ci in {root}, once)")
                try:
                    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=root, capture_output=True,
                                          text=True, timeout=NPM_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise ConfigError(f"npm ci in {root} took over {NPM_TIMEOUT_S} s; run it by hand") from None
                if proc.returncode != 0:
                    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
                    tail = lines[-1] if lines else f"exit code {proc.returncode}"
                    raise ConfigError(f"npm ci in {root} failed ({tail}); run it there by hand to see why")
    dist = root / "node_modules" / ORT_PACKAGE / "dist"
    if not (dist / ORT_ENTRY).is_file():
        raise ConfigError(f"{dist / ORT_ENTRY} is missing; reinstall with `npm ci` in {root}")
    return Page(root, dist, pinned)
