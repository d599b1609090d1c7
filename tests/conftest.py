"""Shared test settings (seeding, hypothesis profile, small per-model input sizes) and the references and
small set-ups that several test files use."""

from __future__ import annotations

import fnmatch
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from torch import nn

from shufflenet.train import TrainConfig

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


# --------------------------------------------------------------------------------- references and set-ups


def shuffle_perm(channels: int, groups: int) -> list[int]:
    """Input channel read by each output channel of the shuffle, written from the definition with two loops.

    Channels are laid out as ``groups`` rows of ``n = channels / groups``; the shuffle reads them column by
    column: first channel 0 of every group, then channel 1 of every group, ...
    """
    n = channels // groups
    perm = []
    for i in range(n):  # position inside a group
        for j in range(groups):  # group
            perm.append(j * n + i)
    return perm


def inverse(perm: list[int]) -> list[int]:
    """The inverse permutation: ``inverse(p)[p[k]] == k``."""
    inv = [0] * len(perm)
    for out_pos, src in enumerate(perm):
        inv[src] = out_pos
    return inv


def randomize_bn(module: nn.Module, bias_low: float = -0.5) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (eval mode then differs from identity).

    Biases are drawn from U(``bias_low``, 0.5).
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(bias_low, 0.5)


def seeded_model(
    model: nn.Module, seed: int = 0, spread: float = 0.3, linear_std: float | None = None
) -> nn.Module:
    """Seeded, non-trivial batch-norm statistics and affine parameters (mean and bias ~ N(0, ``spread``),
    variance and weight ~ U(0.5, 1.5)), so that folding is exercised and outputs are far from zero; with
    ``linear_std``, linear weights ~ N(0, ``linear_std``) too. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * spread)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * spread)
            elif linear_std is not None and isinstance(m, nn.Linear):
                m.weight.normal_(0, linear_std, generator=g)
    return model.eval()


def bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode batch norm written out: (x - mean) / sqrt(var + eps) * weight + bias, per channel."""
    shape = (1, -1, 1, 1)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(shape)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def state_batch_norm(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm of ``x`` with the statistics and affine parameters ``{prefix}.*`` of ``state``."""
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        False,
        0.0,
        1e-5,
    )


def correlation_model(seed: int | None = None) -> nn.Module:
    """conv ``a`` (3 -> 8) -> ReLU ``act`` -> 2x2 average pool -> grouped 1x1 conv ``b`` (8 -> 6, 2 groups).

    float64, so that batching does not change the activations' rounding. ``seed``: seed the weights first.
    """
    if seed is not None:
        torch.manual_seed(seed)
    return (
        nn.Sequential(
            OrderedDict(
                a=nn.Conv2d(3, 8, 3, padding=1),
                act=nn.ReLU(),
                pool=nn.AvgPool2d(2),
                b=nn.Conv2d(8, 6, 1, groups=2),
            )
        )
        .double()
        .eval()
    )


def numpy_correlation(model: nn.Module, images: torch.Tensor, eps: float = 1e-3) -> np.ndarray:
    """ZCA-whitened correlation of :func:`correlation_model`'s ``act`` (8 ch) and ``b`` (6 ch), directly:
    all activations at once, nearest upsampling by repeating pixels, two-pass covariances, ZCA by eigh.
    """
    with torch.no_grad():
        a = model[:2](images).numpy()  # (N, 8, 8, 8)
        b = model(images).numpy()  # (N, 6, 4, 4)
    b = b.repeat(2, axis=2).repeat(2, axis=3)  # (N, 6, 8, 8): each pixel covers a 2x2 block
    x = a.transpose(0, 2, 3, 1).reshape(-1, 8).astype(np.float64)
    y = b.transpose(0, 2, 3, 1).reshape(-1, 6).astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)

    def whiten(z: np.ndarray) -> np.ndarray:
        cov = z.T @ z / len(z)
        lam, u = np.linalg.eigh(cov)
        e = eps * np.trace(cov) / cov.shape[0]
        return z @ (u @ np.diag(1 / np.sqrt(np.clip(lam, 0, None) + e)) @ u.T)

    return whiten(xc).T @ whiten(yc) / len(x)


# A 10k-parameter ShuffleNet v1 trained on 16x16 images: one unit per stage, one thread, no plots.
TINY_TRAIN = dict(
    model="shufflenet_v1_g3_x0_25",
    model_kwargs={"stage_repeats": [1, 1, 1]},
    image_size=16,
    batch_size=32,
    threads=1,
    progress=False,
    plots=False,
    deterministic=True,
)


def tiny_train_config(tmp_path, **kw) -> TrainConfig:
    """:data:`TINY_TRAIN` writing to ``tmp_path``, with ``kw`` overriding."""
    return TrainConfig(**{**TINY_TRAIN, "output": str(tmp_path), **kw})


# ----------------------------------------------------------------- Megvii ShuffleNet v1 release checkpoints
# The release's widths: (groups, model size) -> (stem, stage2, stage3, stage4).
RELEASE = {
    (3, "0.5x"): (12, 120, 240, 480),
    (3, "1.0x"): (24, 240, 480, 960),
    (3, "1.5x"): (24, 360, 720, 1440),
    (3, "2.0x"): (48, 480, 960, 1920),
    (8, "0.5x"): (16, 192, 384, 768),
    (8, "1.0x"): (24, 384, 768, 1536),
    (8, "1.5x"): (24, 576, 1152, 2304),
    (8, "2.0x"): (48, 768, 1536, 3072),
}
RELEASE_REPEATS = (4, 8, 4)


def _random_bn(prefix: str, c: int, gen: torch.Generator, state: dict) -> None:
    state[f"{prefix}.weight"] = torch.rand(c, generator=gen) + 0.5
    state[f"{prefix}.bias"] = torch.randn(c, generator=gen) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(c, generator=gen) * 0.1
    state[f"{prefix}.running_var"] = torch.rand(c, generator=gen) + 0.5
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def _random_conv(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(*shape, generator=gen) * (2.0 / fan_in) ** 0.5


def megvii_state(
    groups: int, widths: tuple[int, ...], num_classes: int = 1000, seed: int = 0
) -> dict:
    """A random state dict with the key names and shapes of the release's ShuffleNetV1."""
    gen = torch.Generator().manual_seed(seed)
    stem, stages = widths[0], widths[1:]
    state: dict[str, torch.Tensor] = {"first_conv.0.weight": _random_conv((stem, 3, 3, 3), gen)}
    _random_bn("first_conv.1", stem, gen, state)
    inp, k = stem, 0
    for s, (oup, n) in enumerate(zip(stages, RELEASE_REPEATS)):
        for i in range(n):
            stride = 2 if i == 0 else 1
            mid = oup // 4
            branch = oup - inp if stride == 2 else oup
            g1 = 1 if (s == 0 and i == 0) else groups
            p = f"features.{k}"
            state[f"{p}.branch_main_1.0.weight"] = _random_conv((mid, inp // g1, 1, 1), gen)
            _random_bn(f"{p}.branch_main_1.1", mid, gen, state)
            state[f"{p}.branch_main_1.3.weight"] = _random_conv((mid, 1, 3, 3), gen)
            _random_bn(f"{p}.branch_main_1.4", mid, gen, state)
            state[f"{p}.branch_main_2.0.weight"] = _random_conv((branch, mid // groups, 1, 1), gen)
            _random_bn(f"{p}.branch_main_2.1", branch, gen, state)
            inp, k = oup, k + 1
    state["classifier.0.weight"] = torch.randn(num_classes, inp, generator=gen) * 0.01
    return state


def save_release_file(path: str | os.PathLike[str], state: dict[str, torch.Tensor]) -> None:
    """As the release's training script saves: {'state_dict': DataParallel state dict} (``module.`` keys)."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


@pytest.fixture(scope="module")
def megvii_file(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """``(state, path)``: a Megvii ShuffleNet v1 g=3 0.5x checkpoint with random weights, as the release
    stores it (:func:`save_release_file`)."""
    state = megvii_state(3, RELEASE[(3, "0.5x")], seed=3)
    path = tmp_path_factory.mktemp("megvii") / "snetv1_g3_0.5x.pth.tar"
    save_release_file(path, state)
    return state, path


# ----------------------------------------------------------------- pickles that would run code
#: the calls unpickling a :class:`CodeOnLoad` made: the evidence that a reader ran code from a file
CODE_RAN: list[tuple] = []


def _record_call(*args):
    """Stands for the code a malicious pickle would run."""
    CODE_RAN.append(args)
    return {}


class CodeOnLoad:
    """Pickles as a call of a function (an unrestricted unpickler makes it, appending to :data:`CODE_RAN`)."""

    def __reduce__(self):
        return (_record_call, ("code ran",))
