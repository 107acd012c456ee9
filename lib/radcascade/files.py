"""Writing a file so that readers never see half of it, and sweeping what interrupted writes leave.

One convention for every file the package writes (model files, images and labels, the datastore
index, reports, statistics): the new content goes to ``<folder>/.tmp/write-<random>.<name>``, is
fsynced, and is renamed over ``<folder>/<name>``; ``.tmp/`` is removed again once empty.  The
hidden folder is on the same filesystem (the rename is atomic) and never matched by a datastore
scan; the temporary's name ends with the destination's, so it keeps the extension ITK chooses its
writer by.  A killed writer
leaves its temporary in ``.tmp/``, which :func:`remove_stale_temporaries` deletes once it is old.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

TMP_DIR_NAME = ".tmp"
TMP_PREFIX = "write-"


def temporary_folder(path: str | os.PathLike) -> Path:
    """Where the temporaries of writes to ``path`` live."""
    return Path(path).parent / TMP_DIR_NAME


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write`` with a temporary path beside ``path``, fsync, then rename it over ``path``.

    Readers see the old file or the whole new one, never half of it; on any error the temporary
    file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = _new_temporary(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        try:
            tmp.parent.rmdir()  # only when empty: no folder outlives the writes (another may be writing)
        except OSError:
            pass
    return path


def _new_temporary(path: Path) -> Path:
    """Create an empty temporary for ``path`` (the folder may vanish under us: a finishing writer
    removes it when empty, so try again)."""
    tmp_dir = temporary_folder(path)
    for attempt in range(5):
        tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f".{path.name}", dir=tmp_dir)
            break
        except FileNotFoundError:
            if attempt == 4:
                raise
    os.close(fd)
    return Path(name)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a binary file that becomes ``path`` atomically (see :func:`atomic_write_path`)."""
    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write_path(path, to_file)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write JSON atomically (readers never see half a file)."""
    return write_text_atomic(path, json.dumps(obj, indent=1))


def remove_stale_temporaries(folder: str | os.PathLike, older_than_s: float = 3600) -> int:
    """Delete what interrupted writes left under ``folder`` (any depth); return how many files went.

    That is the files in ``.tmp`` folders, and the ``.<name>.*.tmp`` files that model publishing
    left beside the model before this convention.  Only old ones go: a writer may be at work now.
    """
    folder = Path(folder)
    found = [f for d in folder.rglob(TMP_DIR_NAME) if d.is_dir() for f in d.iterdir()]
    found += folder.glob(".*.tmp")
    removed = 0
    now = time.time()
    for f in found:
        try:
            if f.is_file() and now - f.stat().st_mtime > older_than_s:
                f.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
