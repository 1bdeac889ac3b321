"""What the HTTP routes do: search and ask for an authenticated principal.

Groups come only from the `Principal` (never from the request) and the ACL is always enforced.
Retrieval and answering are the knowledge and behaviour layers' own (`Retriever`,
`answer_from_hits`); this module holds one Weaviate client and one embedder per process and
turns their results into response models.

Fail closed: a Weaviate error is `BackendUnavailable` (HTTP 503), never an empty hit list; no
loaded model is `ModelUnavailable` (503), never an answer from some other model.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.index import IndexingError
from pipelines.knowledge.retrieval import Retriever, SearchHit
from pipelines.serving import schemas
from pipelines.serving.auth import Principal
from pipelines.serving.metrics import Metrics
from pipelines.settings import Settings

log = logging.getLogger(__name__)
# Two generations at once keep both cores busy; more would only queue inside torch.
GENERATION_SLOTS = 2
_LABEL_MARKER = re.compile(r"\[\s*(\d+)\s*\]")


class BackendUnavailable(Exception):
    """Weaviate could not answer; the caller gets 503, never an empty result."""


class ModelUnavailable(Exception):
    """No answering model is loaded (search-only service, or the champion still loading)."""


class LoadedModel(Protocol):
    """What answering needs from a loaded champion (`pipelines.serving.champion.LoadedChampion`)."""

    @property
    def version(self) -> str | None: ...
    @property
    def model(self) -> Any: ...
    @property
    def tokenizer(self) -> Any: ...
    @property
    def description(self) -> str: ...


class ChampionSource(Protocol):
    """Hands out the model serving now (`pipelines.serving.champion.ChampionHolder`)."""

    @property
    def ready(self) -> bool: ...
    def current(self) -> LoadedModel: ...


@dataclass(frozen=True)
class StaticChampion:
    """A fixed, already loaded model: for tests and single-model runs without the registry watcher."""

    loaded: LoadedModel

    @property
    def ready(self) -> bool:
        return True

    def current(self) -> LoadedModel:
        return self.loaded


class QueryBatcher:
    """Embeds the queries of concurrent requests in one encoder call.

    On a small CPU, sixteen requests each running the encoder contend for the same cores; one
    batched call of sixteen short queries costs little more than one query. A request waits at
    most for the batch in progress plus its own. Stands in for the Embedder inside `Retriever`.
    """

    def __init__(self, embedder: Embedder, max_batch: int = 32) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[str, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-embedder", daemon=True)
        self._thread.start()

    def embed_query(self, text: str) -> Any:
        """The normalised vector of `text`, computed with whatever other queries are waiting."""
        done: Future[Any] = Future()
        self._queue.put((text, done))
        return done.result(timeout=60)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                vectors = self.embedder.embed([text for text, _ in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request fails with the cause
                for _, done in batch:
                    done.set_exception(err)
            else:
                for (_, done), vector in zip(batch, vectors, strict=True):
                    done.set_result(vector)


class Runtime:
    """Per-process state: settings, one Weaviate client, one embedder, the champion, the metrics."""

    def __init__(
        self, settings: Settings, client: Any, embedder: Embedder, champion: ChampionSource | None, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.client = client
        self.champion = champion
        self.metrics = metrics
        self.embedder = embedder  # also the relevance floor's encoder (answer_from_hits)
        # enforce_acl is always on here: the gate's "see everything" mode is never reachable over HTTP.
        self.queries = QueryBatcher(embedder)
        self.retriever = Retriever(
            client, cast(Embedder, self.queries), settings.collection_alias, settings.hybrid_alpha, enforce_acl=True
        )
        self.generation_slots = threading.Semaphore(GENERATION_SLOTS)


def neutralise(question: str) -> str:
    """The question as it may enter a prompt: one line, and `[n]` written `(n)`.

    Prompts list sources as `[1] title: text` on their own lines and answers cite `[n]`; a question
    that carried such markers or line breaks could pose as a source or pre-write a citation.
    """
    return _LABEL_MARKER.sub(r"(\1)", " ".join(question.split()))


def retrieve(
    rt: Runtime,
    principal: Principal,
    query: str,
    k: int,
    alpha: float | None = None,
    filters: dict[str, str] | None = None,
) -> list[SearchHit]:
    """Hits the principal may read; BackendUnavailable when Weaviate cannot answer."""
    from weaviate.exceptions import WeaviateBaseError

    started = time.perf_counter()
    try:
        hits = rt.retriever.search(
            query, k=k, alpha=alpha, filters=filters or None, user_groups=sorted(principal.groups)
        )
    except (WeaviateBaseError, IndexingError, OSError) as err:
        log.error("search failed for %s: %s: %s", principal.subject, type(err).__name__, err)
        raise BackendUnavailable("the search backend is unavailable") from err
    rt.metrics.retrieval.observe(time.perf_counter() - started)
    return hits


def search(rt: Runtime, principal: Principal, request: schemas.SearchRequest) -> schemas.SearchResponse:
    """Hybrid search over the live index, restricted to the principal's groups."""
    started = time.perf_counter()
    hits = retrieve(rt, principal, request.query, request.k, request.alpha, request.filters)
    return schemas.SearchResponse(
        hits=[
            schemas.Hit(
                chunk_id=h.chunk_id,
                doc_id=h.doc_id,
                title=h.title,
                section=h.section,
                source_url=h.source_url,
                position=h.position,
                score=h.score,
                text=h.text,
            )
            for h in hits
        ],
        retrieval_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _model(rt: Runtime) -> LoadedModel:
    if rt.champion is None:
        raise ModelUnavailable("this service runs search only (no answering model)")
    try:
        return rt.champion.current()  # once per request: a swap mid-request cannot mix versions
    except Exception as err:  # noqa: BLE001 - the holder's "not ready yet", whatever its type
        raise ModelUnavailable("the answering model is not loaded yet") from err


@dataclass(frozen=True)
class _Prepared:
    """An ask request resolved up to generation: the model taken for it and the hits it may cite."""

    loaded: LoadedModel
    question: str
    hits: list[SearchHit]
    started: float
    retrieval_s: float


def _prepare(rt: Runtime, principal: Principal, request: schemas.AskRequest) -> _Prepared:
    started = time.perf_counter()
    loaded = _model(rt)
    question = neutralise(request.question)
    hits = retrieve(rt, principal, question, request.k or rt.settings.answer_contexts)
    return _Prepared(loaded, question, hits, started, time.perf_counter() - started)


def ask(rt: Runtime, principal: Principal, request: schemas.AskRequest) -> schemas.AskResponse:
    """Retrieve under the principal's groups, answer with the champion taken once, cite."""
    return _answer(rt, _prepare(rt, principal, request))


def _answer(rt: Runtime, prepared: _Prepared, streamer: Any = None) -> schemas.AskResponse:
    from pipelines.behaviour.answering import answer_from_hits

    loaded, hits = prepared.loaded, prepared.hits
    with rt.generation_slots:
        answer = answer_from_hits(
            loaded,
            rt.settings,
            prepared.question,
            hits,
            retrieval_s=prepared.retrieval_s,
            streamer=streamer,
            embedder=rt.embedder,
        )
    rt.metrics.generation.observe(answer.timings.generation_s)
    by_chunk = {h.chunk_id: h for h in hits}
    spans = {c.label: c.text for c in answer.contexts}
    return schemas.AskResponse(
        question=prepared.question,
        answer=answer.text,
        citations=[
            schemas.Citation(
                label=c.label,
                chunk_id=c.chunk_id,
                doc_id=c.doc_id,
                title=c.title,
                section=by_chunk[c.chunk_id].section,
                source_url=c.source_url,
                span=spans.get(c.label, ""),
            )
            for c in answer.citations
        ],
        grounded=answer.grounded,
        follows_format=answer.follows_format,
        model=answer.model,
        model_version=str(loaded.version) if loaded.version is not None else "base",
        timings=schemas.AskTimings(
            retrieval_ms=round(answer.timings.retrieval_s * 1000, 2),
            generation_ms=round(answer.timings.generation_s * 1000, 2),
            total_ms=round((time.perf_counter() - prepared.started) * 1000, 2),
        ),
    )


def stream_ask(rt: Runtime, principal: Principal, request: schemas.AskRequest) -> Iterator[str]:
    """Server-sent events: `token` events as the model writes, then one `answer` event (the full response).

    The model and the hits are resolved here, before the response starts, so a 503 is still a status code.
    """
    from transformers import TextIteratorStreamer

    prepared = _prepare(rt, principal, request)
    streamer = TextIteratorStreamer(prepared.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    return _stream(rt, prepared, streamer, principal.subject)


def _stream(rt: Runtime, prepared: _Prepared, streamer: Any, subject: str) -> Iterator[str]:
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["answer"] = _answer(rt, prepared, streamer)
        except Exception as err:  # noqa: BLE001 - reported to the client as an `error` event below
            result["error"] = err
            streamer.end()

    worker = threading.Thread(target=work, name="ask-stream", daemon=True)
    worker.start()
    for piece in streamer:
        if piece:
            yield _event("token", json.dumps({"text": piece}))
    worker.join()
    if "answer" in result:
        yield _event("answer", result["answer"].model_dump_json())
    else:
        log.error("streamed ask failed for %s: %r", subject, result.get("error"))
        yield _event("error", json.dumps({"detail": "answering failed"}))


def _event(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


def feedback(rt: Runtime, principal: Principal, request: Any, store: Any) -> Any:
    """Store the principal's feedback (`pipelines.serving.feedback`); its cited chunks are read under its groups."""
    from weaviate.exceptions import WeaviateBaseError

    from pipelines.serving.feedback import record_feedback

    try:
        return record_feedback(store, rt.client, rt.settings, principal, request)
    except (WeaviateBaseError, IndexingError, OSError) as err:
        log.error("feedback lookup failed for %s: %s: %s", principal.subject, type(err).__name__, err)
        raise BackendUnavailable("the search backend is unavailable") from err


def readiness(rt: Runtime) -> dict[str, str]:
    """Each dependency's state (`ok` or why not); ready when all are ok."""
    checks: dict[str, str] = {}
    try:
        checks["weaviate"] = "ok" if rt.client.is_ready() else "not ready"
    except Exception as err:  # noqa: BLE001 - any failure to reach it means not ready
        checks["weaviate"] = f"unreachable: {type(err).__name__}"
    if rt.champion is not None:
        checks["model"] = "ok" if rt.champion.ready else "loading"
    return checks
