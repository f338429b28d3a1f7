"""Content digests of stored checkpoints, so a registered checkpoint can be verified later.

A checkpoint is a folder; its digest is the SHA-256 of a manifest listing every file's relative
path, size and own SHA-256, in path order — the same folder always gives the same digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_digest(folder: Path) -> tuple[str, int]:
    """(hex SHA-256 of the folder's manifest, total bytes) of every file below `folder`."""
    manifest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        total += size
        relative = path.relative_to(folder).as_posix()
        manifest.update(f"{relative}\0{size}\0{file_sha256(path)}\n".encode())
    return manifest.hexdigest(), total
