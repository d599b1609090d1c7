"""Load the compiled engine (building it at first use) and pick the instruction set."""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import POINTER, c_double, c_int, c_int32, c_int64, c_long, c_void_p
from dataclasses import dataclass

from ._abi import ABI_VERSION, ISA_NAMES, SnOp, SnPlan
from .build import BuildInfo, NativeUnavailable, build_library

__all__ = ["NativeLibrary", "get_library", "is_available"]

_lock = threading.Lock()
_cached: NativeLibrary | None = None
_error: NativeUnavailable | None = None


@dataclass
class NativeLibrary:
    """The loaded engine. ``isa`` is the instruction set used (``SHUFFLENET_NATIVE_ISA`` may lower it)."""

    cdll: ctypes.CDLL
    info: BuildInfo
    isa: int
    supported: tuple[str, ...]

    @property
    def isa_name(self) -> str:
        return ISA_NAMES[self.isa]

    def stats(self) -> dict[str, int]:
        """``{"parallel_runs": calls with one image at a time and threads > 1, "serial_fallbacks": how many
        of them ran on one thread (measured faster for that model and shape: a busy machine, or probes)}``."""
        out = (ctypes.c_long * 2)()
        self.cdll.sn_stats(out)
        return {"parallel_runs": int(out[0]), "serial_fallbacks": int(out[1])}

    def vector_width(self, isa: int | None = None) -> int:
        return int(self.cdll.sn_vector_width(self.isa if isa is None else isa))

    def resolve_isa(self, name: str | None) -> int:
        """ISA number for ``name`` (``None``: the best supported); a name the CPU lacks is an error."""
        if name is None:
            return self.isa
        key = name.strip().lower()
        if key not in ISA_NAMES:
            raise ValueError(f"isa={name!r} must be one of {ISA_NAMES}")
        if key not in self.supported:
            raise ValueError(f"isa={name!r} is not available here (supported: {self.supported})")
        return ISA_NAMES.index(key)


_PLAN, _OP = POINTER(SnPlan), POINTER(SnOp)
# The library's functions (``SN_API`` in csrc/sn_runtime.c) other than sn_abi_version, which is checked first:
# name -> (return type, argument types).
_FUNCTIONS = {
    "sn_sizeof_op": (c_int, []),
    "sn_sizeof_plan": (c_int, []),
    "sn_isa_mask": (c_int, []),
    "sn_cpu_vnni": (c_int, []),
    "sn_vector_width": (c_int, [c_int]),
    "sn_run": (c_int, [_PLAN, c_int, c_int, c_void_p, c_void_p]),
    "sn_channel_shuffle": (c_int, [c_void_p, c_void_p, c_int64, c_int, c_int, c_int, c_int]),
    "sn_stats": (None, [POINTER(c_long)]),
    "sn_pack_size": (c_int64, [c_int, _OP]),
    "sn_pack": (None, [c_int, _OP, c_void_p]),
    "sn_plan_deps": (c_int, [_PLAN, c_int, c_int, c_void_p]),
    "sn_check_schedule": (c_int, [_PLAN, c_int, c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "sn_profile": (
        c_int,
        [
            _PLAN,
            c_int,
            c_int,
            c_void_p,
            c_void_p,
            POINTER(c_double),
            POINTER(c_double),
            POINTER(c_int32),
        ],
    ),
}


def _load() -> NativeLibrary:
    info = build_library()
    lib = ctypes.CDLL(str(info.path))
    lib.sn_abi_version.restype = ctypes.c_int
    if lib.sn_abi_version() != ABI_VERSION:
        raise NativeUnavailable(
            f"native library ABI {lib.sn_abi_version()} != {ABI_VERSION}; delete {info.path.parent}"
        )
    for name, (restype, argtypes) in _FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if lib.sn_sizeof_op() != ctypes.sizeof(SnOp) or lib.sn_sizeof_plan() != ctypes.sizeof(SnPlan):
        raise NativeUnavailable("native library struct layout differs from the Python mirror")
    mask = int(lib.sn_isa_mask())
    supported = tuple(n for i, n in enumerate(ISA_NAMES) if mask >> i & 1)
    best = max(i for i in range(len(ISA_NAMES)) if mask >> i & 1)
    want = os.environ.get("SHUFFLENET_NATIVE_ISA")
    isa = best
    if want:
        key = want.strip().lower()
        if key in supported:
            isa = ISA_NAMES.index(key)
    return NativeLibrary(lib, info, isa, supported)


def get_library() -> NativeLibrary:
    """The engine, built and loaded once per process. Raises :class:`NativeUnavailable` (with the reason)."""
    global _cached, _error
    if _cached is not None:
        return _cached
    with _lock:
        if _cached is not None:
            return _cached
        if _error is not None:
            raise _error
        try:
            _cached = _load()
        except NativeUnavailable as e:
            _error = e
            raise
        except OSError as e:
            _error = NativeUnavailable(f"loading the native library failed: {e}")
            raise _error from e
        return _cached


def is_available() -> bool:
    """True if the native engine can be built (or is cached) and loads; never raises."""
    try:
        get_library()
        return True
    except NativeUnavailable:
        return False
