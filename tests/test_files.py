"""The one way to write a file (radcascade.files): atomic, one temporary convention, one sweeper."""

import os
import time

import pytest

from radcascade.files import TMP_DIR_NAME, atomic_write, remove_stale_temporaries, write_json_atomic


def test_atomic_write_leaves_only_the_file(tmp_path):
    write_json_atomic(tmp_path / "sub" / "a.json", {"x": 1})
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]
    assert (tmp_path / "sub" / "a.json").read_text() == '{\n "x": 1\n}'
    assert oct((tmp_path / "sub" / "a.json").stat().st_mode & 0o777) == "0o644"


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_the_temporary_sits_in_the_hidden_folder_and_keeps_the_extension(tmp_path):
    seen = []

    def write(f):
        seen.append(f.name)
        f.write(b"x")

    atomic_write(tmp_path / "label.nii.gz", write)
    tmp = seen[0]
    assert os.path.dirname(tmp) == str(tmp_path / TMP_DIR_NAME)
    assert os.path.basename(tmp).startswith("write-") and tmp.endswith(".label.nii.gz")


def test_sweeper_removes_old_leftovers_at_any_depth_and_keeps_fresh_ones(tmp_path):
    old = time.time() - 7200
    nested = tmp_path / "labels" / "final" / TMP_DIR_NAME
    nested.mkdir(parents=True)
    stale = [nested / "write-abc.l.nii.gz", tmp_path / ".organ.pt.xyz.tmp"]  # the second: before one convention
    for f in stale:
        f.write_bytes(b"x")
        os.utime(f, (old, old))
    fresh = nested / "write-def.l.nii.gz"
    fresh.write_bytes(b"x")
    kept = tmp_path / "organ.pt"
    kept.write_bytes(b"x")
    os.utime(kept, (old, old))
    assert remove_stale_temporaries(tmp_path) == 2
    assert not any(f.exists() for f in stale) and fresh.exists() and kept.exists()
