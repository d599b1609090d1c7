"""The native inference engine: C kernels compiled at first use (see :mod:`.build`) and run through ctypes.

:class:`NativeModule` runs a lowered model; :func:`is_available` says whether a compiler (or a cached build) is
there; :class:`NativeUnavailable` carries the reason when not.

Design, for ShuffleNet v1 (and MobileNet v1, and Sequential stacks of the same layers):

- Layout. Activations are planar (one plane of H*W floats per channel) and SIMD vectors run along pixels.
  ShuffleNet's per-group widths (10, 20, 40, 80, ... channels) are rarely multiples of 16, so vectors along
  channels (NHWC) would leave up to 40% of the lanes of the first 1x1 group conv empty; along pixels they are
  full (a plane's leftover pixels, 49 = 3 * 16 + 1 at 7x7, are done channel-wise). The user-facing tensors are
  NCHW or channels-last; the engine converts at its edges.
- 1x1 group conv = a GEMM per group over input planes listed in an index array. The channel shuffle is that
  index array of the second 1x1 conv (it commutes with the depthwise conv, whose weights are permuted), so it
  costs nothing; the stride-2 unit's concatenation is writing planes at a channel offset. Batch norm is folded,
  ReLU and the residual add happen in the GEMM's epilogue, the 3x3/2 max pool in the stem's.
- Kernels: register tiles of 8 output channels x 3 pixel vectors (AVX-512), weights repacked per tile; 3x3
  depthwise on zero-haloed planes with unaligned loads; dense 3x3 stem; pooling; GAP; FC. One source is
  compiled for AVX-512, AVX2+FMA and portable C; the CPU picks at run time.
- Threads: own pool (pthreads). One image at a time: each op is cut into chunks, each thread owns the same
  region of the image in every op (cache locality) and takes what is left of the others' when done; a chunk
  starts once the chunks of the previous op that write the pixels it reads are done and the op before that is
  complete, so a thread that finished its share goes on with the next op. Batch >= threads: one image per
  thread, no synchronisation. Waits spin (at most 200 us, adapting to the waits seen), then sleep (futex).
  The requested thread count is used as given. Opt-in adaptive mode (``SHUFFLENET_NATIVE_ADAPTIVE=1``, read
  once per process): on a machine whose cores are taken by other processes, the thread an op waits for is
  often not running and one image can be faster on one thread, so each bound model keeps the wall times of
  its recent calls with all threads and with one, runs the faster (median of the last 8) and every 16th call
  the other, to follow the load (``get_library().stats()`` counts the one-thread calls). On an idle machine
  that is all threads.
"""

from ._lib import get_library, is_available
from .build import NativeBuildError, NativeUnavailable, build_library, cache_root

__all__ = [
    "NativeBuildError",
    "NativeModule",
    "NativeUnavailable",
    "build_library",
    "cache_root",
    "get_library",
    "is_available",
]


def __getattr__(name: str):
    if name == "NativeModule":
        from .module import NativeModule

        return NativeModule
    raise AttributeError(name)
