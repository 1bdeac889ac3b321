"""Concurrent search queries share one encoder call and get the vectors they would get alone (issue 11)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipelines.knowledge.embedding import Embedder
from pipelines.serving.service import QueryBatcher
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(Settings().embedding_model_path)


def test_batched_queries_get_the_vectors_they_would_get_alone(embedder: Embedder) -> None:
    queries = [f"revenue growth in quarter {n} of the {'long ' * n}fiscal year" for n in range(12)]
    batcher = QueryBatcher(embedder)
    calls = []
    original = embedder.embed

    def counting(texts):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(texts)

    embedder.embed = counting  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(12) as pool:
            batched = list(pool.map(batcher.embed_query, queries))
    finally:
        del embedder.embed
        batcher.close()
    alone = [embedder.embed_query(q) for q in queries]
    for got, want in zip(batched, alone, strict=True):
        assert np.allclose(got, want, atol=1e-5)
    assert sum(calls) == len(queries) and len(calls) < len(queries), f"no batching happened: {calls}"


def test_an_encoder_failure_reaches_every_waiting_request(embedder: Embedder) -> None:
    batcher = QueryBatcher(embedder)

    def broken(texts):  # type: ignore[no-untyped-def]
        raise RuntimeError("encoder out of memory")

    embedder.embed = broken  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.embed_query, "q") for _ in range(4)]
            for future in futures:
                with pytest.raises(RuntimeError, match="out of memory"):
                    future.result(timeout=30)
    finally:
        del embedder.embed
        batcher.close()
