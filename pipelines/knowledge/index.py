"""Weaviate: connections, versioned collections behind an alias, writes and deletes.

Readers always query the alias (`Documents` by default). A full rebuild writes a
new collection `<alias>_<timestamp>` and re-points the alias only after its
quality gate passes; earlier collections stay for rollback.

Incremental runs never change what readers see before their gate accepts them.
Every chunk carries `gen_from` (the generation that wrote it) and `gen_to` (the
generation that retired it, 0 while current); the collection's description holds
the live generation G. Readers see `gen_from <= G and not gen_to in {G-15..G}`
(`visible_filter` says why it is phrased that way).
A run writes its new chunks as G+1 and marks obsolete ones `gen_to = G+1`: both are
invisible to readers until the commit raises G to G+1 in one schema update, after
which retired chunks are deleted. A rejected or crashed run is undone by deleting
`gen_from > G` and resetting `gen_to > G` (see `pipelines.knowledge.reindex`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from pipelines.knowledge.chunking import Chunk
from pipelines.settings import Settings

log = logging.getLogger(__name__)
WRITE_PAGE = 500
# States a versioned collection's description records. Only `accepted` collections are ever
# rollback targets; a `building` one that is not the alias target is a leftover of a killed
# or rejected rebuild and is dropped by the next run.
BUILDING, ACCEPTED = "building", "accepted"
# A batch delete's failed objects are retried this many times in all, waiting 0.5 s, 1 s, ...
# between tries: enough for a transient doc-id race to settle, short enough to fail a run promptly.
DELETE_ATTEMPTS, DELETE_RETRY_S = 3, 0.5


class IndexingError(RuntimeError):
    """Weaviate rejected objects, or the index is not in the expected state."""


@contextmanager
def connect(settings: Settings) -> Iterator[Any]:
    """A client for the configured Weaviate (local stack by default, or `WEAVIATE_URL`)."""
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    config = AdditionalConfig(timeout=Timeout(init=30, query=60, insert=120))
    # `skip_init_checks` below: the client's start-up checks include a look-up of its newest release
    # on pypi.org, an outside call on every connection (and a 30 s wait where egress is dropped).
    # Without them the client still reads the server's meta, so a wrong key fails here, and a dead
    # gRPC port fails the first query loudly.
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
            skip_init_checks=True,
        )
    else:
        client = weaviate.connect_to_local(
            host="127.0.0.1",
            port=settings.weaviate_http_port,
            grpc_port=settings.weaviate_grpc_port,
            # The local server refuses anonymous requests; `up` generated its key.
            auth_credentials=Auth.api_key(settings.weaviate_key) if settings.weaviate_key else None,
            additional_config=config,
            skip_init_checks=True,
        )
    try:
        yield client
    finally:
        client.close()


def new_collection_name(alias: str) -> str:
    """A fresh, sortable versioned name such as `Documents_20261127T021500123456`."""
    return f"{alias}_{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def create_collection(client: Any, name: str, description: Mapping[str, Any]) -> Any:
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
            Property(
                name="content_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False
            ),
            Property(
                name="acl", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD, index_searchable=False
            ),
            Property(
                name="source_url", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False
            ),
            Property(name="gen_from", data_type=DataType.INT, index_range_filters=True),
            Property(name="gen_to", data_type=DataType.INT, index_range_filters=True),
        ],
    )


def describe(client: Any, collection: str) -> dict[str, Any]:
    """What a collection's description records: data version (DVC hash, git revision, run id), state, generation."""
    return _parse_description(collection, client.collections.use(collection).config.get().description)


def _parse_description(collection: str, description: str | None) -> dict[str, Any]:
    try:
        return dict(json.loads(description or "{}"))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        # The description holds the live generation: guessing would show readers uncommitted chunks.
        raise IndexingError(f"description of {collection} is not the JSON this project writes: {err}") from err


def set_description(client: Any, collection: str, description: Mapping[str, Any]) -> None:
    client.collections.use(collection).config.update(description=json.dumps(dict(description)))


def update_description(client: Any, collection: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the collection's description (data version, state, live generation)."""
    merged = {**describe(client, collection), **fields}
    set_description(client, collection, merged)
    return merged


def live_generation(client: Any, collection: str) -> int | None:
    """The generation readers of `collection` (a collection, not the alias) see; None if it has no generations.

    A service error raises: a reader that cannot tell what is live must not guess.
    """
    target = collection  # callers resolve the alias once and query that same collection
    config = client.collections.use(target).config.get()
    value = _parse_description(target, config.description).get("generation")
    if value is None:
        if any(prop.name == "gen_from" for prop in config.properties):
            raise IndexingError(f"{target} has generations but its description names no live one")
        return None  # a collection built before generations existed: every object is live
    return int(value)


# Retirements a reader at G hides by value: G and the generations just before it. An older one cannot exist:
# each commit of G runs after its own run's reconcile deleted every chunk retired at or before G-1, and a
# failed delete fails that run before its commit. The window is slack for that rule, and stays small because
# each value costs the query a lookup (16 values: no measurable cost; 365: +4 ms on 2,000 chunks).
RETIRED_WINDOW = 16


def visible_filter(generation: int | None) -> Any:
    """Chunks live at `generation`: written at or before it, and not retired at or before it.

    Phrased so that a chunk being retired or un-retired stays visible all through the update. Weaviate
    updates a property by deleting its old index entry and then adding the new one, and evaluates each
    leaf of a filter at its own instant. So `gen_to == 0 or gen_to > G` misses a chunk whose `gen_to` moves
    0 -> G+1 (each leaf sees the other value, or none), and so does any range on `gen_to`; a negated
    equality does not, since the chunk never holds a value it names. Measured with a reader at G while 20
    chunks toggled 0 <-> G+1 for 4-5 s: 10 to 68 misses in 2,600-3,200 reads for the positive and range
    forms, 0 in 3,409 for this one (tests/reliability/test_index_fail_closed.py checks it).
    """
    if generation is None:
        return None
    from weaviate.classes.query import Filter

    visible = Filter.by_property("gen_from").less_or_equal(generation)  # never changes once written
    retired = list(range(max(1, generation - RETIRED_WINDOW + 1), generation + 1))
    if retired:  # generation 0 (a rebuild before its commit) has retired nothing
        visible = visible & Filter.not_(Filter.by_property("gen_to").contains_any(retired))
    return visible


# A commit takes well under a second and runs at most daily: three commits during one read means something is
# committing in a loop, and the reader says so instead of serving whatever it caught.
READ_ATTEMPTS = 3
T = TypeVar("T")


def read_live(client: Any, collection: str, query: Callable[[str, Any], T], attempts: int = READ_ATTEMPTS) -> T:
    """`query(name, visible)` on one whole version of what readers of `collection` (an alias, or a name) see.

    A reader reads the live generation, then queries it. A commit in between (its clean-up deleting the chunks
    it retired) would serve part of a document, so the generation is read again after the query and, if it
    moved, the query runs again on the new one (a seqlock: a commit publishes the generation before it deletes
    anything). A full rebuild that moves the alias and drops the collection mid-query is retried the same way;
    any other error raises. Single node: a schema read lagging the shard on a cluster would defeat the check.
    """
    last: Exception | None = None
    for _ in range(attempts):
        # Resolve the alias once per attempt: the generation read and the query must name the same collection.
        name = alias_target(client, collection) or collection
        try:
            generation = live_generation(client, name)
            result = query(name, visible_filter(generation))
            if live_generation(client, name) == generation:
                return result
        except Exception as err:
            if (alias_target(client, collection) or collection) == name:
                raise  # a service error, not a rebuild moving the alias: the reader must not guess
            last = err
        log.info("%s changed during a read; reading again", collection)
    raise IndexingError(f"{collection} changed during each of {attempts} attempts at one read") from last


def assert_no_stale_retirements(client: Any, collection: str, generation: int) -> None:
    """Refuse to publish `generation` while a chunk retired before it (at or before the live one) is still stored.

    `visible_filter` hides retirements by value within `RETIRED_WINDOW`; that is exact only because each run's
    reconcile deletes every retirement at or before the live generation before the run commits. Checked here
    (one range query; nothing is being updated at commit time) so that a broken rule fails the run, not readers.
    """
    from weaviate.classes.query import Filter

    stale = Filter.by_property("gen_to").greater_than(0) & Filter.by_property("gen_to").less_than(generation)
    found = client.collections.use(collection).query.fetch_objects(filters=stale, limit=1, return_properties=[])
    if found.objects:
        raise IndexingError(
            f"{collection} still holds chunks retired before generation {generation} (e.g. {found.objects[0].uuid}); "
            f"reconcile should have deleted them. Not publishing generation {generation}"
        )


def upsert_chunks(
    client: Any,
    collection: str,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    generation: int = 0,
    page_size: int = WRITE_PAGE,
) -> int:
    """Write chunks with their vectors as `generation` through the batch API; any failed object raises."""
    if not chunks:
        return 0
    from weaviate.classes.data import DataObject

    target = client.collections.use(collection)
    # insert_many is one batch request per page (upsert by UUID) with a per-object error
    # list; unlike the background batcher it has no start-up/flush cost, which
    # dominates the small writes of a daily incremental run.
    for start in range(0, len(chunks), page_size):
        page = range(start, min(start + page_size, len(chunks)))
        result = target.data.insert_many(
            [
                DataObject(
                    properties=_properties(chunks[i], generation), uuid=chunks[i].uuid, vector=vectors[i].tolist()
                )
                for i in page
            ]
        )
        if result.errors:
            index, error = next(iter(result.errors.items()))
            raise IndexingError(
                f"{len(result.errors)} of {len(page)} objects failed to write to {collection}; "
                f"first: {chunks[start + index].uuid}: {error.message}"
            )
    return len(chunks)


def _properties(chunk: Chunk, generation: int) -> dict[str, Any]:
    return {
        "doc_id": chunk.doc_id,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        "position": chunk.position,
        "content_hash": chunk.content_hash,
        "acl": list(chunk.acl),
        "source_url": chunk.source_url,
        "gen_from": generation,
        "gen_to": 0,
    }


def update_positions(client: Any, collection: str, positions: Mapping[str, int]) -> None:
    """Chunks whose text is unchanged but that moved within their document."""
    target = client.collections.use(collection)
    for object_id, position in positions.items():
        target.data.update(uuid=object_id, properties={"position": position})


def retire_objects(
    client: Any,
    collection: str,
    object_ids: Sequence[str],
    generation: int,
    after_page: Callable[[int], None] | None = None,
    page_size: int = WRITE_PAGE,
) -> None:
    """Mark chunks as retired by `generation` (0 un-retires them); readers of older generations still see them."""
    target = client.collections.use(collection)
    for n, object_id in enumerate(object_ids, start=1):
        target.data.update(uuid=object_id, properties={"gen_to": generation})
        if after_page and n % page_size == 0:
            after_page(n)


def delete_where(client: Any, collection: str, where: Any) -> int:
    """Delete every object matching `where`, page after page until none is left.

    A call with failures is retried (the filter matches what is left) up to DELETE_ATTEMPTS
    times in a row; then the run fails rather than leave the objects behind silently.
    """
    target = client.collections.use(collection)
    deleted, failures = 0, 0
    while True:  # each call deletes at most QUERY_MAXIMUM_RESULTS objects
        result = target.data.delete_many(where=where)
        deleted += result.successful
        if result.failed:
            failures += 1
            if failures >= DELETE_ATTEMPTS:
                raise IndexingError(
                    f"{result.failed} deletions failed in {collection} after {DELETE_ATTEMPTS} attempts"
                    " (the Weaviate log has the reasons)"
                )
            log.warning("%d deletions failed in %s; retrying", result.failed, collection)
            time.sleep(DELETE_RETRY_S * failures)
            continue
        failures = 0
        if not result.matches:
            return deleted


def reset_retirements(client: Any, collection: str, above: int, page_size: int = 500) -> int:
    """Un-retire chunks whose retirement (`gen_to > above`) was never committed."""
    from weaviate.classes.query import Filter

    target = client.collections.use(collection)
    reset = 0
    while True:  # reset objects drop out of the filter, so the first page is always the next one
        page = target.query.fetch_objects(
            filters=Filter.by_property("gen_to").greater_than(above), limit=page_size, return_properties=[]
        )
        if not page.objects:
            return reset
        for obj in page.objects:
            target.data.update(uuid=obj.uuid, properties={"gen_to": 0})
        reset += len(page.objects)


def all_ids(client: Any, collection: str) -> list[str]:
    """Every object id in the collection, paginated with the cursor API (no properties, no vectors)."""
    target = client.collections.use(collection)
    return [str(o.uuid) for o in target.iterator(return_properties=[], cache_size=1000)]


def delete_objects(
    client: Any,
    collection: str,
    object_ids: Sequence[str],
    page_size: int = 500,
    after_page: Callable[[int], None] | None = None,
) -> int:
    """Delete by id, one page at a time, and check that every page really went.

    Weaviate can fail single objects of a batch delete transiently (seen once in CI right after
    the same objects were patched). The ids of a page with failures that still exist are retried
    up to DELETE_ATTEMPTS times; if any still stands, the run fails naming them. An id that no
    longer exists is gone, which is what was asked.
    """
    from weaviate.classes.query import Filter

    target = client.collections.use(collection)
    deleted = 0
    # Pages keep each request under Weaviate's per-query result limit (QUERY_MAXIMUM_RESULTS).
    for start in range(0, len(object_ids), page_size):
        page = list(object_ids[start : start + page_size])
        pending = page
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            result = target.data.delete_many(where=Filter.by_id().contains_any(pending))
            deleted += result.successful
            if not result.failed:
                break
            standing = _existing(target, pending)
            if not standing:
                break
            if attempt == DELETE_ATTEMPTS:
                raise IndexingError(
                    f"{len(standing)} deletions failed in {collection} after {DELETE_ATTEMPTS} attempts"
                    f" (the Weaviate log has the reasons), e.g. {standing[:3]}"
                )
            log.warning("%d deletions failed in %s; retrying", len(standing), collection)
            time.sleep(DELETE_RETRY_S * attempt)
            pending = standing
        if after_page:
            after_page(start + len(page))
    return deleted


def _existing(target: Any, object_ids: Sequence[str]) -> list[str]:
    """Those of `object_ids` that are still in the collection (one filtered, id-only query)."""
    from weaviate.classes.query import Filter

    found = target.query.fetch_objects(
        filters=Filter.by_id().contains_any(list(object_ids)), limit=len(object_ids), return_properties=[]
    )
    return sorted(str(o.uuid) for o in found.objects)


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
    """Versioned collections of this alias (named by `new_collection_name`), oldest first."""
    ours = re.compile(rf"^{re.escape(alias)}_\d{{8}}T\d{{12}}$")  # never a hand-made `Documents_archive`
    return sorted(name for name in client.collections.list_all(simple=True) if ours.match(name))


def live_document_ids(client: Any, collection: str) -> set[str]:
    """Document ids readers of `collection` can see (one scan of the `doc_id` property)."""
    generation = live_generation(client, collection)
    target = client.collections.use(collection)
    visible = visible_filter(generation)
    if visible is None:
        return {str(o.properties["doc_id"]) for o in target.iterator(return_properties=["doc_id"])}
    ids: set[str] = set()
    for obj in target.iterator(return_properties=["doc_id", "gen_from", "gen_to"]):
        gen_from, gen_to = int(obj.properties.get("gen_from") or 0), int(obj.properties.get("gen_to") or 0)
        if gen_from <= (generation or 0) and (gen_to == 0 or gen_to > (generation or 0)):
            ids.add(str(obj.properties["doc_id"]))
    return ids


def accepted_versions(client: Any, alias: str) -> list[str]:
    """Versions whose gate accepted them, oldest first: the only ones an alias may point to."""
    return [name for name in versions(client, alias) if describe(client, name).get("state") == ACCEPTED]


def unfinished_versions(client: Any, alias: str) -> list[str]:
    """Versions left `building` by a killed or failed rebuild (never the alias target)."""
    current = alias_target(client, alias)
    return [
        name for name in versions(client, alias) if name != current and describe(client, name).get("state") != ACCEPTED
    ]


def rollback_alias(client: Any, alias: str, collection: str | None = None) -> str:
    """Re-point the alias to `collection`, or to the accepted version before the current one."""
    current = alias_target(client, alias)
    available = accepted_versions(client, alias)
    if collection is None:
        older = [name for name in available if current is None or name < current]
        if not older:
            raise IndexingError(f"no collection older than {current} to roll back to")
        collection = older[-1]
    if collection not in available:
        raise IndexingError(f"{collection} is not an accepted version of {alias}; have {available}")
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
