"""Channel shuffle of channels-last tensors at memory-copy speed.

In channels-last memory a shuffle permutes the ``C`` floats of every pixel: ``out[p, i * g + j] = in[p, j * n +
i]`` (``n = C / g``). PyTorch runs that as a strided copy with an innermost extent of ``g`` floats, several times
slower than copying the tensor. The native kernel (:mod:`.native`) builds each output vector from ``g``
unaligned loads and masked lane permutes, streaming through memory once, on all threads; without it (no
compiler, CUDA, other dtypes or layouts) :func:`shufflenet.channel_shuffle` is used.

:func:`measure_shuffle_bandwidth` times it against ``clone()`` (bytes read + written per second).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..ops.channel_shuffle import channel_shuffle, channel_unshuffle
from ..ops.validate import check_channels_divisible, check_groups_arg
from ..utils import torch_threads

__all__ = [
    "channel_shuffle_nhwc",
    "FastChannelShuffle",
    "measure_shuffle_bandwidth",
    "native_shuffle_available",
]


def _library():
    from .native._lib import get_library
    from .native.build import NativeUnavailable

    try:
        return get_library()
    except NativeUnavailable:
        return None


def native_shuffle_available() -> bool:
    """True if the compiled kernel can be used (builds the native library on first call)."""
    return _library() is not None


def _rows_view(x: torch.Tensor) -> tuple[int, int] | None:
    """``(pixels, C)`` if ``x`` is float32 on the CPU with channels innermost and dense, else None."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 2:
        return None
    if x.dim() == 2:
        return (x.shape[0], x.shape[1]) if x.is_contiguous() else None
    perm = (0, *range(2, x.dim()), 1)
    if not x.permute(perm).is_contiguous():
        return None
    c = x.shape[1]
    return (x.numel() // c if c else 0, c)


def channel_shuffle_nhwc(
    x: torch.Tensor,
    groups: int,
    *,
    inverse: bool = False,
    out: torch.Tensor | None = None,
    threads: int | None = None,
    use_native: bool = True,
) -> torch.Tensor:
    """:func:`shufflenet.channel_shuffle` (``inverse``: :func:`shufflenet.channel_unshuffle`) for channels-last tensors.

    Args:
        x: ``(N, C, *S)`` with channels innermost in memory (``channels_last``), or ``(P, C)`` rows; other
            layouts, dtypes and devices fall back to :func:`shufflenet.channel_shuffle`.
        groups: ``g``; ``C`` must be divisible by it.
        inverse: apply the inverse permutation (:func:`shufflenet.channel_unshuffle`).
        out: optional preallocated result, same shape and layout as ``x`` (not overlapping it).
        threads: threads of the native kernel (default ``torch.get_num_threads()``).
        use_native: ``False`` forces the PyTorch path.

    Returns:
        A new tensor of the same shape and memory format.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"channel_shuffle_nhwc expects a torch.Tensor, got {type(x).__name__}")
    check_groups_arg(groups)
    if x.dim() < 2:
        raise ValueError(
            f"channel_shuffle_nhwc expects (N, C, ...) or (P, C), got shape {tuple(x.shape)}"
        )
    check_channels_divisible(x.shape[1], groups, what="channels")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(
            f"out has shape {tuple(out.shape)} / {out.dtype} / {out.device}, x {tuple(x.shape)}"
        )
    rows = _rows_view(x) if use_native else None
    lib = _library() if rows is not None else None
    if (
        out is not None
        and rows is not None
        and (out.stride() != x.stride() or out.data_ptr() == x.data_ptr())
    ):
        rows = None  # a differently laid out or aliased out: the generic path below copies into it
    if lib is None or rows is None:
        if x.dim() == 2:
            g = x.shape[1] // groups if inverse else groups
            y = x.reshape(x.shape[0], g, -1).transpose(1, 2).reshape(x.shape)
        else:
            y = channel_unshuffle(x, groups) if inverse else channel_shuffle(x, groups)
        return y if out is None else out.copy_(y)
    p, c = rows
    g = c // groups if inverse else groups
    if out is None:
        out = torch.empty_like(x)
    if p and c:
        t = max(1, int(threads or torch.get_num_threads()))
        rc = lib.cdll.sn_channel_shuffle(x.data_ptr(), out.data_ptr(), p, c, g, lib.isa, t)
        if rc != 0:
            raise RuntimeError(f"native channel shuffle failed with code {rc}")
    return out


class FastChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle_nhwc` (same result as :class:`shufflenet.ChannelShuffle`)."""

    def __init__(self, groups: int, inverse: bool = False, use_native: bool = True) -> None:
        super().__init__()
        check_groups_arg(groups)
        self.groups = groups
        self.inverse = inverse
        self.use_native = use_native

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle_nhwc(
            x, self.groups, inverse=self.inverse, use_native=self.use_native
        )

    def extra_repr(self) -> str:
        return f"groups={self.groups}, inverse={self.inverse}, use_native={self.use_native}"


def _time(fn, rounds: int) -> list[float]:
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def measure_shuffle_bandwidth(
    shape: tuple[int, int, int, int] = (32, 240, 28, 28),
    groups: int = 3,
    rounds: int = 30,
    threads: int | None = None,
    gap: float = 0.005,
) -> dict:
    """Time ``clone()`` against the shuffles on a channels-last float32 tensor of ``shape``.

    Measured in interleaved rounds (load that changes during the run hits all alike): ``clone()`` against
    the native shuffle and PyTorch's :func:`shufflenet.channel_shuffle` (all three allocate their result), and
    ``out.copy_(x)`` against the native shuffle into a preallocated ``out`` (no allocation, so no page faults:
    the pure bandwidth comparison). Bandwidth counts bytes read plus written, ``2 * numel * 4``, per second of
    the median (and of the fastest) round. Each timed call follows a ``gap``-second sleep, so that the thread
    pool of one variant (PyTorch's OpenMP threads spin after a parallel copy) does not slow the next.

    Returns:
        dict with ``shape, groups, threads, bytes``, ``gbps`` / ``gbps_best`` per variant (``clone``,
        ``torch``, ``native``, ``copy_``, ``native_out``; the native ones are missing without a compiler) and
        the ratios ``native_vs_clone``, ``torch_vs_clone``, ``native_out_vs_copy`` (medians).
    """
    with torch_threads(threads):  # the caller's thread count is restored after
        return _measure_shuffle_bandwidth(shape, groups, rounds, gap)


def _measure_shuffle_bandwidth(
    shape: tuple[int, ...], groups: int, rounds: int, gap: float
) -> dict:
    import statistics

    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    buf = torch.empty_like(x)
    nbytes = 2 * x.numel() * x.element_size()
    fns = {
        "clone": lambda: x.clone(),
        "torch": lambda: channel_shuffle(x, groups),
        "copy_": lambda: buf.copy_(x),
    }
    if native_shuffle_available():
        if not torch.equal(channel_shuffle_nhwc(x, groups), channel_shuffle(x, groups)):
            raise RuntimeError("native channel shuffle differs from channel_shuffle")
        fns["native"] = lambda: channel_shuffle_nhwc(x, groups)
        fns["native_out"] = lambda: channel_shuffle_nhwc(x, groups, out=buf)
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order[r % len(order) :] + order[: r % len(order)]:
            if gap > 0:
                time.sleep(gap)
            times[k] += _time(fns[k], 1)
    gbps = {k: nbytes / statistics.median(v) / 1e9 for k, v in times.items()}
    best = {k: nbytes / min(v) / 1e9 for k, v in times.items()}

    def ratio(a: str, b: str) -> float | None:
        return gbps[a] / gbps[b] if a in gbps and b in gbps else None

    return {
        "shape": list(shape),
        "groups": groups,
        "bytes": nbytes,
        "threads": torch.get_num_threads(),
        "gbps": gbps,
        "gbps_best": best,
        "native_vs_clone": ratio("native", "clone"),
        "torch_vs_clone": ratio("torch", "clone"),
        "native_out_vs_copy": ratio("native_out", "copy_"),
    }
