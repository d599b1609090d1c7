"""The native inference engine: C kernels compiled at first use (see :mod:`.build`) and run through ctypes.

:class:`NativeModule` runs a lowered model; :func:`is_available` says whether a compiler (or a cached build) is
there; :class:`NativeUnavailable` carries the reason when not.
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
