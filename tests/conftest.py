"""Shared test settings: seeding, hypothesis profile, and small per-model input sizes."""

from __future__ import annotations

import fnmatch
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests: no per-example deadline (the CPUs are shared), a fixed example budget, reproducible runs.
settings.register_profile(
    "shufflenet",
    deadline=None,
    max_examples=40,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("shufflenet")

# Two small input sizes (H, W) per model for forward/backward tests, by name pattern (first match wins).
# Sizes are as small as the model's strides and pooling allow, so each registered model costs little.
# A model not listed here gets DEFAULT_SIZES (fine for anything that downsamples by 32 with padded
# convolutions and ends in adaptive pooling).
SIZE_HINTS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    # 11x11/4 conv and three unpadded 3x3/2 max pools: 63 px is the smallest input.
    "alexnet*": ((63, 63), (79, 71)),
    # Xception-style entry flows use unpadded convolutions; give them room.
    "xception*": ((71, 71), (80, 75)),
    "nin*": ((32, 32), (40, 36)),
}
DEFAULT_SIZES: tuple[tuple[int, int], tuple[int, int]] = ((32, 32), (48, 40))


def input_sizes(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two input sizes (H, W) for the registered model ``name``."""
    for pattern, sizes in SIZE_HINTS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return sizes
    return DEFAULT_SIZES


# Table 1 of the paper: output channels of Stage2/3/4 at width 1x.
TABLE1_STAGES = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}


def documented_channels(g: int, s: float) -> tuple[int, tuple[int, int, int]]:
    """The channel rounding rule of the ShuffleNetV1 docstring, written out independently."""
    unit = 4 * g
    stem = max(12, 24 * 2 ** math.floor(math.log2(s)))
    stem = -(-stem // g) * g  # round up to a multiple of g
    stage2 = int(math.floor(s * TABLE1_STAGES[g][0] / unit + 0.5)) * unit  # round half up to 4g
    above_stem = unit
    while above_stem <= stem:  # the first stride-2 unit must add channels to the stem's
        above_stem += unit
    c2 = max(stage2, above_stem)
    return stem, (c2, 2 * c2, 4 * c2)


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: the tests use tiny tensors, and on a shared machine several spinning OpenMP
    # threads per process make them many times slower. SHUFFLENET_TEST_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("SHUFFLENET_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
