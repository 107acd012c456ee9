"""Answer files: each in its own private folder, gone with the request.

MONAI Label's client saves an answer under the server's file *name* in its own temp folder; a
client on the same host that writes into the folder where the server deletes its copy after
answering would lose the result.  So every answer is written into a fresh folder of its own
(``<tmp>/radcascade-result-*/``), which :func:`discard` removes with the file once it is sent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

RESULT_DIR_PREFIX = "radcascade-result-"


def new_result_path(suffix: str) -> Path:
    """A path for one answer, in a folder of its own."""
    return Path(tempfile.mkdtemp(prefix=RESULT_DIR_PREFIX)) / f"result{suffix}"


def discard(path: str | os.PathLike | None) -> None:
    """Remove a sent file, and its private answer folder when it is one."""
    if not path:
        return
    path = Path(path)
    path.unlink(missing_ok=True)
    if path.parent.name.startswith(RESULT_DIR_PREFIX):
        shutil.rmtree(path.parent, ignore_errors=True)
