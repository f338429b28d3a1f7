"""Content hashes: the one canonical encoding behind every cache key and idempotency key.

Two services that hash the same content must get the same key, whatever their field order or
Python version, so hashing goes through canonical JSON (sorted keys, no whitespace, UTF-8) or
protobuf's deterministic serialization — never through `repr` or `str`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from google.protobuf.message import Message


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace; dataclasses and numpy scalars are handled by orjson."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def content_hash(*parts: Any) -> str:
    """Hex SHA-256 of the parts, each canonical; `content_hash(a, b) != content_hash(b, a)`."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = _encode(part)
        # Length-prefixed, so ("ab", "c") and ("a", "bc") never collide.
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


def _encode(part: Any) -> bytes:
    if isinstance(part, Message):
        return (
            part.DESCRIPTOR.full_name.encode() + b"\0" + part.SerializeToString(deterministic=True)
        )
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    return canonical_json(part)
