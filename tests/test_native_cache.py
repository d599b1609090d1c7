"""The native engine's build cache: hash verification, rebuild of a damaged library, stale build directories.

A stand-in compiler (a script that records its calls and "links" by copying a library built by the real
compiler) makes every rebuild here instant, so the cache logic is tested without compiling anything twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from shufflenet.deploy.native import build
from shufflenet.deploy.native.build import find_compiler

if find_compiler() is None:
    pytest.skip(
        "no C compiler (cc/gcc/clang): the native engine cannot be built", allow_module_level=True
    )


@pytest.fixture(scope="module")
def real_library() -> Path:
    try:
        return (
            build.build_library().path
        )  # the session's cache (built once, shared with test_native)
    except build.NativeUnavailable as e:
        pytest.fail(f"native engine did not build: {e}")


@pytest.fixture
def fake_cc(tmp_path, real_library, monkeypatch):
    """A cache root of its own and a compiler that copies ``real_library`` when asked to link."""
    log = tmp_path / "cc.log"
    script = tmp_path / "fakecc"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""
        import shutil, sys
        args = sys.argv[1:]
        with open({str(log)!r}, "a") as f:
            f.write(" ".join(args) + "\\n")
        if args == ["--version"]:
            print("fakecc 1.0")
            sys.exit(0)
        out = args[args.index("-o") + 1]
        if "-shared" in args:
            shutil.copyfile({str(real_library)!r}, out)
        else:
            open(out, "wb").write(b"object")
        """)
    )
    script.chmod(0o755)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SHUFFLENET_CACHE", str(cache))
    monkeypatch.setenv("SHUFFLENET_CC", str(script))
    monkeypatch.delenv("SHUFFLENET_NATIVE", raising=False)

    def links() -> int:
        return (
            sum("-shared" in line for line in log.read_text().splitlines()) if log.exists() else 0
        )

    return cache, links


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_the_hash_of_the_built_library(fake_cc, real_library):
    _, links = fake_cc
    info = build.build_library()
    assert info.built and links() == 1
    record = json.loads((info.path.parent / build.MANIFEST_NAME).read_text())
    assert record["sha256"] == _sha256(real_library) == _sha256(info.path)
    assert record["bytes"] == real_library.stat().st_size
    assert tuple(record["variants"]) == info.variants and "generic" in info.variants
    again = build.build_library()
    assert not again.built and again.variants == info.variants and links() == 1


def test_truncated_cached_library_is_rebuilt_not_loaded(fake_cc, real_library):
    """In a fresh process: loading a truncated library would end it with SIGBUS."""
    _, links = fake_cc
    lib = build.build_library().path
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])
    code = textwrap.dedent("""
        import torch
        from shufflenet import channel_shuffle
        from shufflenet.deploy import channel_shuffle_nhwc
        from shufflenet.deploy.native import get_library
        lib = get_library()
        x = torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
        err = (channel_shuffle_nhwc(x, 3) - channel_shuffle(x, 3)).abs().max().item()
        print("built", lib.info.built, "error", err)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert proc.returncode == 0, proc.stderr  # not -7 (SIGBUS)
    assert "built True error 0.0" in proc.stdout
    assert "does not match the hash recorded when it was built" in proc.stderr
    assert links() == 2 and _sha256(lib) == _sha256(real_library)


def test_a_flipped_byte_is_detected(fake_cc, real_library):
    _, links = fake_cc
    lib = build.build_library().path
    data = bytearray(lib.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, other content
    lib.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="does not match the hash"):
        info = build.build_library()
    assert info.built and links() == 2 and _sha256(lib) == _sha256(real_library)


@pytest.mark.parametrize("damage", ["missing", "truncated", "not json", "no hash"])
def test_a_damaged_manifest_means_a_rebuild(fake_cc, damage):
    _, links = fake_cc
    manifest = build.build_library().path.parent / build.MANIFEST_NAME
    text = manifest.read_text()
    if damage == "missing":
        manifest.unlink()
    elif damage == "truncated":
        manifest.write_text(text[: len(text) // 2])
    elif damage == "not json":
        manifest.write_text("generic avx2\n")  # the older plain-text list of variants
    else:
        manifest.write_text(json.dumps({"variants": ["generic"]}))
    if damage == "missing":  # a build stopped before writing it: nothing damaged, no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            info = build.build_library()
    else:
        with pytest.warns(RuntimeWarning, match="manifest .* is unreadable"):
            info = build.build_library()
    assert info.built and links() == 2 and manifest.read_text() == text


def test_stale_build_directories_are_removed(fake_cc):
    _, links = fake_cc
    out_dir = build.build_library().path.parent
    stale = [out_dir / "build-killed1", out_dir / "build-killed2" / "nested"]
    for d in stale:
        d.mkdir(parents=True)
        (d / "sn_kernels_generic.o").write_bytes(b"partial")
    info = build.build_library()  # a valid cache: nothing rebuilt, the leftovers go
    assert not info.built and links() == 1
    assert not list(out_dir.glob("build-*"))
    (out_dir / "build-killed3").mkdir()
    info.path.unlink()  # killed before the library was written
    assert build.build_library().built and links() == 2
    assert not list(out_dir.glob("build-*"))


def test_manifest_is_written_atomically(fake_cc, monkeypatch):
    _, links = fake_cc
    out_dir = build.build_library().path.parent
    manifest = out_dir / build.MANIFEST_NAME
    before = manifest.read_text()

    def dies_half_way(obj, f):
        f.write(json.dumps(obj)[:10])
        raise KeyboardInterrupt  # the process stopped while writing

    monkeypatch.setattr(build.json, "dump", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        build.build_library(force=True)
    assert manifest.read_text() == before  # the old manifest, whole
    assert sorted(p.name for p in out_dir.iterdir()) == [build.LIB_NAME, build.MANIFEST_NAME]
