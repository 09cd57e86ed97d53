"""Evidence files kept by content: `evidence_dir/<sha256[:2]>/<sha256>`, written atomically.

The layout is the one `store.store_evidence` uses, so a file kept by either is found by both.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ncpi_workflow.errors import UserError

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


def check_file(source: Path, max_bytes: int) -> int:
    """The size of a regular file within the limit, or a one-line UserError naming the file."""
    source = Path(source)
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    size = source.stat().st_size
    if size > max_bytes:
        raise UserError(f"{source}: evidence file is {size:,} bytes, over the {max_bytes:,}-byte limit")
    return size


def hash_file(source: Path, max_bytes: int) -> tuple[str, int]:
    """SHA-256 and size of a file, refusing one over `max_bytes` before reading it (and if it grows)."""
    check_file(source, max_bytes)
    digest = hashlib.sha256()
    size = 0
    with Path(source).open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            size += len(chunk)
            if size > max_bytes:
                raise UserError(f"{source}: evidence file is over the {max_bytes:,}-byte limit")
            digest.update(chunk)
    return digest.hexdigest(), size


def keep_file(source: Path, evidence_dir: Path, max_bytes: int) -> StoredFile:
    """Copy a file into the content-addressed store, hashing it as it is copied.

    The copy goes to a temporary file in the target folder and is renamed into place, so a crash
    never leaves a half-written file under a hash; the same content twice is kept once.
    """
    source = Path(source)
    check_file(source, max_bytes)
    evidence_dir = Path(evidence_dir)
    evidence_dir.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(prefix=".incoming-", suffix=".partial", dir=evidence_dir)
    partial = Path(partial_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, source.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise UserError(f"{source}: evidence file is over the {max_bytes:,}-byte limit")
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
