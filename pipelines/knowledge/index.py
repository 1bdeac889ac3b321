"""Weaviate: connections, versioned collections behind an alias, writes and deletes.

Readers always query the alias (`Documents` by default). A full rebuild writes a
new collection `<alias>_<timestamp>` and re-points the alias only after its
quality gate passes; earlier collections stay for rollback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import numpy as np

from pipelines.knowledge.chunking import Chunk
from pipelines.settings import Settings

log = logging.getLogger(__name__)
WRITE_PAGE = 500


class IndexingError(RuntimeError):
    """Weaviate rejected objects, or the index is not in the expected state."""


@contextmanager
def connect(settings: Settings) -> Iterator[Any]:
    """A client for the configured Weaviate (local stack by default, or `WEAVIATE_URL`)."""
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    config = AdditionalConfig(timeout=Timeout(init=30, query=60, insert=120))
    if settings.weaviate_url:
        http = urlparse(settings.weaviate_url)
        grpc = urlparse(settings.weaviate_grpc_url or f"{http.scheme}://{http.hostname}:50051")
        client = weaviate.connect_to_custom(
            http_host=http.hostname or "localhost",
            http_port=http.port or (443 if http.scheme == "https" else 80),
            http_secure=http.scheme == "https",
            grpc_host=grpc.hostname or "localhost",
            grpc_port=grpc.port or 50051,
            grpc_secure=grpc.scheme in ("https", "grpcs"),
            auth_credentials=Auth.api_key(settings.weaviate_key) if settings.weaviate_key else None,
            additional_config=config,
            skip_init_checks=False,
        )
    else:
        client = weaviate.connect_to_local(
            host="127.0.0.1",
            port=settings.weaviate_http_port,
            grpc_port=settings.weaviate_grpc_port,
            # The local server refuses anonymous requests; `up` generated its key.
            auth_credentials=Auth.api_key(settings.weaviate_key) if settings.weaviate_key else None,
            additional_config=config,
        )
    try:
        yield client
    finally:
        client.close()


def new_collection_name(alias: str) -> str:
    """A fresh, sortable versioned name such as `Documents_20261127T021500123456`."""
    return f"{alias}_{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def create_collection(client: Any, name: str, description: Mapping[str, str]) -> Any:
    """A collection for chunks with our own vectors (no vectorizer module)."""
    from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

    return client.collections.create(
        name,
        description=json.dumps(dict(description)),
        vector_config=Configure.Vectors.self_provided(
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
        ),
        properties=[
            Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
            Property(name="title", data_type=DataType.TEXT),
            Property(name="section", data_type=DataType.TEXT),
            Property(name="text", data_type=DataType.TEXT),
            Property(name="position", data_type=DataType.INT),
            Property(name="content_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                     index_searchable=False),
            Property(name="acl", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD,
                     index_searchable=False),
            Property(name="source_url", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                     index_searchable=False),
        ],
    )  # fmt: skip


def describe(client: Any, collection: str) -> dict[str, str]:
    """The data version stored with a collection (DVC hash, git revision, run id)."""
    description = client.collections.use(collection).config.get().description or "{}"
    try:
        return dict(json.loads(description))
    except json.JSONDecodeError:
        return {}


def set_description(client: Any, collection: str, description: Mapping[str, str]) -> None:
    client.collections.use(collection).config.update(description=json.dumps(dict(description)))


def upsert_chunks(client: Any, collection: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
    """Write chunks with their vectors through the batch API; any failed object raises."""
    if not chunks:
        return 0
    from weaviate.classes.data import DataObject

    target = client.collections.use(collection)
    # insert_many is one batch request per page (upsert by UUID) with a per-object error
    # list; unlike the background batcher it has no start-up/flush cost, which
    # dominates the small writes of a daily incremental run.
    for start in range(0, len(chunks), WRITE_PAGE):
        page = range(start, min(start + WRITE_PAGE, len(chunks)))
        result = target.data.insert_many(
            [DataObject(properties=_properties(chunks[i]), uuid=chunks[i].uuid, vector=vectors[i].tolist())
             for i in page]
        )  # fmt: skip
        if result.errors:
            index, error = next(iter(result.errors.items()))
            raise IndexingError(
                f"{len(result.errors)} of {len(page)} objects failed to write to {collection}; "
                f"first: {chunks[start + index].uuid}: {error.message}"
            )
    return len(chunks)


def _properties(chunk: Chunk) -> dict[str, Any]:
    return {
        "doc_id": chunk.doc_id,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        "position": chunk.position,
        "content_hash": chunk.content_hash,
        "acl": list(chunk.acl),
        "source_url": chunk.source_url,
    }


def update_positions(client: Any, collection: str, positions: Mapping[str, int]) -> None:
    """Chunks whose text is unchanged but that moved within their document."""
    target = client.collections.use(collection)
    for object_id, position in positions.items():
        target.data.update(uuid=object_id, properties={"position": position})


def delete_objects(client: Any, collection: str, object_ids: Sequence[str], page_size: int = 500) -> int:
    """Delete by id, one page at a time, and check that every page really went."""
    from weaviate.classes.query import Filter

    target = client.collections.use(collection)
    deleted = 0
    # Pages keep each request under Weaviate's per-query result limit (QUERY_MAXIMUM_RESULTS).
    for start in range(0, len(object_ids), page_size):
        page = list(object_ids[start : start + page_size])
        result = target.data.delete_many(where=Filter.by_id().contains_any(page))
        if result.failed:
            raise IndexingError(f"{result.failed} deletions failed in {collection}")
        deleted += result.successful
    return deleted


def count_objects(client: Any, collection: str) -> int:
    return int(client.collections.use(collection).aggregate.over_all(total_count=True).total_count or 0)


def alias_target(client: Any, alias: str) -> str | None:
    """The collection the alias points to, or None before the first build."""
    found = client.alias.get(alias_name=alias)
    return found.collection if found else None


def point_alias(client: Any, alias: str, collection: str) -> str | None:
    """Atomically re-point the alias; returns the collection it pointed to before."""
    previous = alias_target(client, alias)
    if previous is None:
        client.alias.create(alias_name=alias, target_collection=collection)
    elif previous != collection:
        client.alias.update(alias_name=alias, new_target_collection=collection)
    log.info("alias %s: %s -> %s", alias, previous, collection)
    return previous


def versions(client: Any, alias: str) -> list[str]:
    """Versioned collections of this alias, oldest first."""
    prefix = f"{alias}_"
    return sorted(name for name in client.collections.list_all(simple=True) if name.startswith(prefix))


def rollback_alias(client: Any, alias: str, collection: str | None = None) -> str:
    """Re-point the alias to `collection`, or to the version before the current one."""
    current = alias_target(client, alias)
    available = versions(client, alias)
    if collection is None:
        older = [name for name in available if current is None or name < current]
        if not older:
            raise IndexingError(f"no collection older than {current} to roll back to")
        collection = older[-1]
    if collection not in available:
        raise IndexingError(f"{collection} is not a version of {alias}; have {available}")
    point_alias(client, alias, collection)
    return collection


def drop_old_versions(client: Any, alias: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions, never the one the alias points to."""
    current = alias_target(client, alias)
    old = [name for name in versions(client, alias) if name != current]
    doomed = old[: max(0, len(old) - max(keep - 1, 0))]
    for name in doomed:
        client.collections.delete(name)
    return doomed
