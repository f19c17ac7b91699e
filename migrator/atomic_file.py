"""Replacing a file so that a reader sees the old one or the new one, never a part (temporary file next
to it, fsync, rename); a failed write leaves no temporary file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replacing(dest: Path, *, prefix: str | None = None, mode: int | None = None) -> Iterator[BinaryIO]:
    """``with replacing(path) as out: out.write(...)``: ``path`` is replaced when the block ends without an
    exception (``mode``: its permission bits), untouched otherwise. Raise inside the block to abandon."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(dest: Path, text: str, *, mode: int | None = None) -> None:
    with replacing(dest, mode=mode) as out:
        out.write(text.encode())
