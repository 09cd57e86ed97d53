"""Evidence files kept by content: `evidence_dir/<sha256[:2]>/<sha256>`, written atomically.

The layout is the one `store.store_evidence` uses, so a file kept by either is found by both.
"""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import printable

CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    filename: str
    sha256: str
    size_bytes: int
    storage_path: Path
    content_type: str
    created: bool
    """False when a file with the same content was already kept."""


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def stored_path(evidence_dir: Path, sha256: str) -> Path:
    return Path(evidence_dir) / sha256[:2] / sha256


def _kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def open_evidence(source: Path, max_bytes: int) -> tuple[int, int]:
    """An open file descriptor on a regular file within the limit, and its size; or a one-line UserError
    naming the file and saying what it is.

    The file is opened without following a symbolic link (O_NOFOLLOW) and judged on what was opened
    (fstat), so nothing can be swapped in between the check and the read: a link to /etc/shadow, a
    directory, a FIFO (opened without waiting for a writer) or /dev/zero is refused, never read."""
    shown = printable(str(source))
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(source, flags)
    except FileNotFoundError:
        raise UserError(f"{shown}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{shown}: is a symbolic link; give the evidence file itself, not a link to it") from None
        if exc.errno == errno.ENXIO:  # a socket cannot be opened
            raise UserError(f"{shown}: is a socket, not a regular file; evidence must be a regular file") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"{shown}: permission denied") from None
        if exc.errno == errno.ENOTDIR:
            raise UserError(f"{shown}: no such file (a part of the path is not a folder)") from None
        raise UserError(f"{shown}: cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{shown}: is {_kind(info.st_mode)}, not a regular file; evidence must be a regular file")
        if info.st_size > max_bytes:
            raise UserError(f"{shown}: evidence file is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit")
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd, info.st_size


def check_file(source: Path, max_bytes: int) -> int:
    """The size of a regular file within the limit, or a one-line UserError naming the file."""
    fd, size = open_evidence(source, max_bytes)
    os.close(fd)
    return size


def _chunks(handle, source: Path, max_bytes: int):
    size = 0
    for chunk in iter(lambda: handle.read(CHUNK), b""):
        size += len(chunk)
        if size > max_bytes:
            raise UserError(f"{printable(str(source))}: evidence file is over the {max_bytes:,}-byte limit")
        yield chunk


def hash_file(source: Path, max_bytes: int) -> tuple[str, int]:
    """SHA-256 and size of a file, refusing one over `max_bytes` before reading it (and if it grows)."""
    fd, _ = open_evidence(source, max_bytes)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as handle:
        for chunk in _chunks(handle, source, max_bytes):
            size += len(chunk)
            digest.update(chunk)
    return digest.hexdigest(), size


def keep_file(source: Path, evidence_dir: Path, max_bytes: int) -> StoredFile:
    """Copy a file into the content-addressed store, hashing it as it is copied.

    The copy goes to a temporary file in the target folder and is renamed into place, so a crash
    never leaves a half-written file under a hash; the same content twice is kept once.
    """
    source = Path(source)
    source_fd, _ = open_evidence(source, max_bytes)
    try:
        evidence_dir = Path(evidence_dir)
        evidence_dir.mkdir(parents=True, exist_ok=True)
        fd, partial_name = tempfile.mkstemp(prefix=".incoming-", suffix=".partial", dir=evidence_dir)
    except BaseException:
        os.close(source_fd)
        raise
    partial = Path(partial_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, os.fdopen(source_fd, "rb") as handle:
            for chunk in _chunks(handle, source, max_bytes):
                size += len(chunk)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        target = stored_path(evidence_dir, sha256)
        created = not target.exists()
        if created:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.replace(target)  # atomic within one file system
    finally:
        partial.unlink(missing_ok=True)
    return StoredFile(source.name, sha256, size, target, content_type(source.name), created)
