"""Shared fixtures (kept small: anything used by one file lives in that file)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator, so every test sees the same data on every run."""
    return np.random.default_rng(20240601)
