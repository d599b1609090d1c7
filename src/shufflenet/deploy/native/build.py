"""Compile the native engine at first use with the system C compiler, and cache the shared library.

No build step runs at ``pip install`` time (the package stays a pure-Python wheel that installs offline in
seconds): the C sources ship as package data under ``csrc/`` and are compiled the first time the native backend
is asked for. The result is cached under ``$SHUFFLENET_CACHE/native/<key>/`` (default
``$XDG_CACHE_HOME/shufflenet`` or ``~/.cache/shufflenet``), where ``<key>`` hashes the sources, the compiler
and its flags, so an upgrade or another compiler rebuilds. Concurrent first uses (e.g. ``pytest -n``) build
once, under a file lock.

Beside the library, ``manifest.json`` records the variants built and the SHA-256 and size of the library
(written atomically, after the library). A cached library is used only when it matches its manifest; a damaged
one (a truncated file would otherwise crash the process with SIGBUS when it is mapped) is rebuilt, with a
warning; a library without a manifest (a build stopped before writing it) is rebuilt too. Temporary ``build-*`` directories left by a compile that was killed are removed at the next use.

On x86-64 the kernels are compiled three times, for AVX-512 (``-mavx512f -mavx512vl -mavx512bw -mavx512dq``),
AVX2 + FMA and plain x86-64, into one library that picks the best set the CPU supports at run time
(``__builtin_cpu_supports``); elsewhere only the portable build is made. A variant that the compiler cannot build
is left out. Threads are the engine's own (pthreads), so no OpenMP runtime is loaded beside torch's.

Environment:
    SHUFFLENET_CACHE: cache root.
    SHUFFLENET_CC / CC: the compiler (default: the first of cc, gcc, clang on PATH).
    SHUFFLENET_NATIVE=0: pretend no compiler is available (the pure-PyTorch fallback is used).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...utils import atomic_write

__all__ = [
    "NativeBuildError",
    "NativeUnavailable",
    "BuildInfo",
    "build_library",
    "cache_root",
    "find_compiler",
]

LIB_NAME = "libshufflenet_native.so"
MANIFEST_NAME = "manifest.json"
_OLD_MANIFEST_NAME = "variants.txt"  # the plain list of variants of earlier caches (no hash)
_SOURCES = ("sn_native.h", "sn_simd.h", "sn_vtab.h", "sn_int8.h", "sn_kernels.c", "sn_runtime.c")
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
# (name, ISA number, extra flags); the portable variant is always built.
_VARIANTS = (
    ("generic", 0, ()),
    ("avx2", 1, ("-mavx2", "-mfma")),
    ("avx512", 2, ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma")),
)
_COMMON_FLAGS = ("-O3", "-fPIC", "-std=c11", "-pthread", "-fno-math-errno", "-fvisibility=hidden")


class NativeUnavailable(RuntimeError):
    """The native engine cannot be used here (no C compiler, a failed build, or disabled)."""


class NativeBuildError(NativeUnavailable):
    """The compiler ran and failed; the message carries its output."""


@dataclass(frozen=True)
class BuildInfo:
    """Where the library is and how it was made."""

    path: Path
    compiler: str
    variants: tuple[str, ...]
    built: bool  # False when it came from the cache
    seconds: float


def cache_root() -> Path:
    """``$SHUFFLENET_CACHE`` or ``$XDG_CACHE_HOME/shufflenet`` or ``~/.cache/shufflenet``."""
    env = os.environ.get("SHUFFLENET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "shufflenet"


def source_dir() -> Path:
    return Path(__file__).resolve().parent / "csrc"


def find_compiler() -> str | None:
    """The C compiler to use, or None. ``SHUFFLENET_NATIVE=0`` hides it on purpose."""
    if os.environ.get("SHUFFLENET_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    for name in (os.environ.get("SHUFFLENET_CC"), os.environ.get("CC"), "cc", "gcc", "clang"):
        if name:
            path = shutil.which(name.split()[0])
            if path:
                return path
    return None


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def _variants() -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    return _VARIANTS if _X86 else _VARIANTS[:1]


def _build_key(cc: str) -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode())
        h.update((source_dir() / name).read_bytes())
    h.update(_compiler_id(cc).encode())
    h.update(repr((_COMMON_FLAGS, _variants(), platform.machine(), sys.platform)).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _file_digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_size


def _write_manifest(out_dir: Path, variants: list[str]) -> None:
    digest, size = _file_digest(out_dir / LIB_NAME)
    record = {"variants": variants, "sha256": digest, "bytes": size}
    with atomic_write(out_dir / MANIFEST_NAME) as f:
        json.dump(record, f)
        f.write("\n")
    (out_dir / _OLD_MANIFEST_NAME).unlink(missing_ok=True)


def _verified_variants(out_dir: Path) -> tuple[tuple[str, ...] | None, str | None]:
    """``(variants, None)`` when the cached library matches its manifest, else ``(None, why)``.

    ``why`` is ``None`` when there is nothing to verify (no library, or no manifest: a build stopped before
    writing it, or a cache written before manifests existed) and names the damage otherwise.
    """
    lib, manifest = out_dir / LIB_NAME, out_dir / MANIFEST_NAME
    if not lib.is_file() or not manifest.exists():
        return None, None
    try:
        record = json.loads(manifest.read_text())
        variants, want, size = record["variants"], record["sha256"], record["bytes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"its manifest {str(manifest)!r} is unreadable ({type(e).__name__}: {e})"
    if not (isinstance(variants, list) and all(isinstance(v, str) for v in variants)):
        return None, f"its manifest {str(manifest)!r} is malformed"
    try:
        digest, actual = _file_digest(lib)
    except OSError as e:
        return None, f"it cannot be read ({e})"
    if (digest, actual) != (want, size):
        return None, (
            f"it does not match the hash recorded when it was built ({actual} bytes, expected {size})"
        )
    return tuple(variants), None


def _remove_stale_builds(out_dir: Path) -> None:
    """Delete ``build-*`` directories of killed compiles; call with the build lock held."""
    for d in out_dir.glob("build-*"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _run(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def build_library(force: bool = False, verbose: bool = False) -> BuildInfo:
    """Return the cached library, compiling it first if needed.

    Raises:
        NativeUnavailable: no compiler (or ``SHUFFLENET_NATIVE=0``).
        NativeBuildError: the compiler failed for the portable variant or at link time.
    """
    cc = find_compiler()
    if cc is None:
        raise NativeUnavailable(
            "no C compiler found (looked for $SHUFFLENET_CC, $CC, cc, gcc, clang; or SHUFFLENET_NATIVE=0 is "
            "set): the native backend is unavailable. Install gcc or clang to enable it; meanwhile the "
            "pure-PyTorch 'optimized' backend is used."
        )
    key = _build_key(cc)
    out_dir = cache_root() / "native" / key
    lib = out_dir / LIB_NAME
    if not force:
        variants, _ = _verified_variants(out_dir)
        if variants is not None and not any(out_dir.glob("build-*")):
            return BuildInfo(lib, cc, variants, False, 0.0)
    t0 = time.perf_counter()
    with _file_lock(cache_root() / "native" / f".{key}.lock"):
        _remove_stale_builds(out_dir)  # no other build of this key runs while the lock is held
        if not force:
            variants, why = _verified_variants(out_dir)
            if variants is not None:
                return BuildInfo(lib, cc, variants, False, 0.0)
            if why is not None:
                warnings.warn(
                    f"the cached native library {str(lib)!r} is not used: {why}; rebuilding it",
                    RuntimeWarning,
                    stacklevel=2,
                )
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp_s:
            tmp = Path(tmp_s)
            src = source_dir()
            procs = []
            for name, isa, flags in _variants():
                obj = tmp / f"sn_kernels_{name}.o"
                cmd = [cc, *_COMMON_FLAGS, *flags, f"-DSN_ISA={isa}", f"-DSN_SUFFIX=_{name}",
                       "-c", str(src / "sn_kernels.c"), "-o", str(obj)]  # fmt: skip
                procs.append((name, obj, cmd, _run(cmd, tmp)))
            ok: list[str] = []
            objs: list[Path] = []
            logs: list[str] = []
            for name, obj, cmd, proc in procs:
                out, _ = proc.communicate()
                if proc.returncode == 0 and obj.exists():
                    ok.append(name)
                    objs.append(obj)
                else:
                    logs.append(f"$ {' '.join(cmd)}\n{out}")
                if verbose and out:
                    print(out, file=sys.stderr)
            if "generic" not in ok:
                raise NativeBuildError("compiling the native engine failed:\n" + "\n".join(logs))
            rt_obj = tmp / "sn_runtime.o"
            defs = [
                f"-DSN_HAVE_AVX2={int('avx2' in ok)}",
                f"-DSN_HAVE_AVX512={int('avx512' in ok)}",
            ]
            cmd = [cc, *_COMMON_FLAGS, *defs, "-c", str(src / "sn_runtime.c"), "-o", str(rt_obj)]
            proc = _run(cmd, tmp)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise NativeBuildError(
                    f"compiling the native runtime failed:\n$ {' '.join(cmd)}\n{out}"
                )
            tmp_lib = tmp / LIB_NAME
            cmd = [
                cc,
                "-shared",
                "-pthread",
                "-o",
                str(tmp_lib),
                str(rt_obj),
                *map(str, objs),
                "-lm",
            ]
            proc = _run(cmd, tmp)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise NativeBuildError(
                    f"linking the native engine failed:\n$ {' '.join(cmd)}\n{out}"
                )
            with open(tmp_lib, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp_lib, lib)
            _write_manifest(out_dir, ok)
    return BuildInfo(lib, cc, tuple(ok), True, time.perf_counter() - t0)
