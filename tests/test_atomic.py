"""Atomic writes: permissions follow the umask (new files) or the replaced file, no temporary file is left."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from shufflenet.utils import atomic_path, atomic_write

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")

# Writes three new files with the library's writers under the umask given on the command line and prints
# their permission bits.
_CHILD = textwrap.dedent("""
    import json, os, sys
    import torch
    from shufflenet import create_model, save_model
    from shufflenet.utils import atomic_path, atomic_write
    os.umask(int(sys.argv[1], 8))
    d = sys.argv[2]
    with atomic_write(os.path.join(d, "a.json")) as f:
        f.write("{}")
    with atomic_path(os.path.join(d, "b.pt")) as tmp:
        torch.save({"x": torch.zeros(2)}, tmp)
    save_model(os.path.join(d, "c.safetensors"), create_model("shufflenet_v1_g3_x0_25"))
    print(json.dumps({n: os.stat(os.path.join(d, n)).st_mode & 0o7777 for n in sorted(os.listdir(d))}))
""")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask):
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, oct(umask)[2:], str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    modes = json.loads(out)
    expected = 0o666 & ~umask  # what open(path, "w") creates
    assert modes == {"a.json": expected, "b.pt": expected, "c.safetensors": expected}


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    os.chmod(target, 0o444)  # read-only: replaced (the directory is writable), still read-only
    with atomic_path(target) as tmp:
        tmp.write_text("newer")
    assert target.read_text() == "newer" and stat.S_IMODE(target.stat().st_mode) == 0o444
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("partial")
        raise RuntimeError("stopped")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    with pytest.raises(ValueError, match="mode='a'"):
        atomic_write(target, "a").__enter__()
