"""Query vectors are remembered per encoder: the same vector as a fresh encode, and no caller can change it."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.knowledge import embedding
from pipelines.knowledge.embedding import Embedder
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def encoder() -> Embedder:
    return Embedder(Settings().embedding_model_path)


def test_a_repeated_query_is_encoded_once_and_matches_a_fresh_encode(encoder: Embedder) -> None:
    calls: list[int] = []
    original = encoder._encode

    def counting(texts, progress):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(texts, progress)

    encoder._encode = counting  # type: ignore[method-assign]
    try:
        first = encoder.embed_query("What do banks need to prepare for?")
        again = encoder.embed_query("What do banks need to prepare for?")
    finally:
        del encoder._encode
    assert calls == [1]
    fresh = encoder.model.encode(["What do banks need to prepare for?"], normalize_embeddings=True)[0]
    assert again is first and np.allclose(first, fresh, atol=1e-6)
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 0.0  # a caller that mutated it would corrupt every later search for this text


def test_the_cache_keeps_only_the_newest_queries(encoder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "QUERY_CACHE_SIZE", 3)
    for text in ("one", "two", "three", "four"):
        encoder.embed_query(text)
    assert "one" not in encoder._queries and {"two", "three", "four"} <= set(encoder._queries)
    assert len(encoder._queries) <= 3
