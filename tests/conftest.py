"""Shared pytest fixtures: seeded generators, random and saved bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ttfs.contract.bundle import Bundle, save_bundle
from ttfs.sim.random_bundle import random_bundle, random_images


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator with a fixed seed, so every failure reproduces."""
    return np.random.default_rng(20261101)


@pytest.fixture
def small_bundle(rng) -> Bundle:
    """A 1x4x4 -> 6 -> 3 bundle at T=8 with 6-bit weights."""
    return random_bundle(rng, sizes=(16, 6, 3), time_steps=8, weight_bits=6, lut="default")


@pytest.fixture
def small_images(rng, small_bundle) -> np.ndarray:
    """Eight uint8 images (N, 1, 4, 4) for ``small_bundle``."""
    return random_images(rng, small_bundle, 8)


@pytest.fixture
def bundle_dir(tmp_path, small_bundle) -> Path:
    """``small_bundle`` saved under tmp_path/bundle."""
    return save_bundle(small_bundle, tmp_path / "bundle")


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: small tensors run fastest so, and two
    threads contend badly on a shared 2-core machine.  (torch is imported here,
    not at the top, so that tests without torch do not pay for importing it.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
