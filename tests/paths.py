"""Where the tests find data that lives outside the repository (never copied into it)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TESLA_SHARED", ROOT.parent / "shared"))
CIFAR10_SUBSET = Path(os.environ.get("TESLA_CIFAR10_SUBSET", SHARED / "data" / "cifar10-subset"))

requires_cifar10_subset = pytest.mark.skipif(
    not (CIFAR10_SUBSET / "cifar-10-batches-py").is_dir(),
    reason=f"the shared CIFAR-10 subset is not at {CIFAR10_SUBSET} (set TESLA_SHARED)",
)
