"""The daily re-indexing job, as four steps the DAG runs as tasks.

validate -> version -> index -> evaluate & gate. Steps pass only a run id and a
collection name; the validated batch is staged under `state/runs/<run id>/`, so
every step sees exactly the documents that passed validation, whatever lands in
the source meanwhile. One MLflow run spans the steps.

Fail closed, whatever goes wrong:
- readers never see a run before its gate accepts it: `index` writes a new generation
  that readers do not see, `evaluate` measures that generation and either commits it
  (one schema update switches readers) or deletes it again (see `pipelines.knowledge.index`);
- the manifest is the commit point; every run first reconciles the live collection with
  it (uncommitted writes deleted, committed clean-up finished, ids compared), so a run
  killed anywhere converges on the next one;
- a run that would delete or rewrite more than `max_change_share` of the live documents
  stops before writing unless a person allowed it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.failures import MassChangeRefused, QualityGateFailed
from pipelines.faults import crash_point
from pipelines.knowledge import index as idx
from pipelines.knowledge.boilerplate import CleaningReport, boilerplate_rule, remove_boilerplate
from pipelines.knowledge.chunking import Chunk, ChunkerConfig
from pipelines.knowledge.documents import Document, load_documents, load_options
from pipelines.knowledge.embedding import Embedder, VectorCache
from pipelines.knowledge.evaluation import Baseline, RetrievalGateDecision, evaluate_retrieval, gate, load_golden
from pipelines.knowledge.manifest import (
    ChunkSpool,
    IndexManifest,
    IndexPlan,
    ManifestCorrupt,
    change_share,
    plan_update,
)
from pipelines.knowledge.retrieval import Retriever
from pipelines.knowledge.validation import enforce, validate_documents, validation_limits
from pipelines.settings import Settings
from pipelines.tracking import run_url, tracked_run

log = logging.getLogger(__name__)


@dataclass
class IndexResult:
    """What the index step did (small: goes through XCom as a dict)."""

    collection: str
    mode: str
    counts: dict[str, int]
    timings_s: dict[str, float]
    chunks_embedded: int
    generation: int = 0  # the staged generation, invisible to readers until committed
    live_generation: int = 0  # what readers saw when the run started


@dataclass
class ReindexReport:
    """The outcome of a whole run."""

    run_id: str
    index: IndexResult
    metrics: dict[str, float]
    decision: RetrievalGateDecision
    alias_target: str | None = None
    dropped_collections: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.decision.passed

    def summary(self) -> dict[str, Any]:
        return {
            "mlflow_run_id": self.run_id,
            "mode": self.index.mode,
            "collection": self.index.collection,
            "alias_target": self.alias_target,
            "accepted": self.accepted,
            "gate": self.decision.reasons,
            "counts": self.index.counts,
            "chunks_embedded": self.index.chunks_embedded,
            "timings_s": self.index.timings_s,
            "metrics": {k: round(v, 4) for k, v in self.metrics.items()},
        }


WRITTEN_AT = "written_at"  # file in the run folder: when the index step last wrote to Weaviate
CANDIDATE = "candidate_manifest.json"  # file in the run folder: the manifest the run commits if accepted
CLEANING = "cleaning.json"  # file in the run folder: what boilerplate removal cut, per document
REFERENCE_TAG = "retrieval.reference_run_id"  # experiment tag: the run a person pinned as reference


def _run_dir(settings: Settings, run_id: str) -> Path:
    return settings.state_dir / "runs" / run_id


def stage_documents(path: Path, documents: Sequence[Document]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for document in documents:
            out.write(json.dumps(asdict(document), ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class StagedDocuments:
    """A run's staged documents, read from disk one at a time on each pass (issue 12: a rebuild never holds
    the corpus). Every pass reads the same file, which the validate step wrote once."""

    path: Path

    def __iter__(self) -> Iterator[Document]:
        with self.path.open(encoding="utf-8") as rows:
            for line in rows:
                if line.strip():
                    row = json.loads(line)
                    yield Document(**{**row, "acl": tuple(row["acl"])})


def validate_step(settings: Settings, tags: Mapping[str, str] | None = None) -> str:
    """Load and validate today's documents; stage the valid ones. Returns the MLflow run id.

    `tags` go on the MLflow run (the Airflow run it belongs to, from `RunOrigin.tags()`).

    A hard failure raises `ValidationFailed` here, before Weaviate is touched.
    """
    import mlflow

    documents, problems = load_documents(settings.documents_location, load_options(settings))
    # Before validation: a document cleaned to nothing is quarantined there, with a reason, never dropped.
    documents, cleaning = remove_boilerplate(documents, boilerplate_rule(settings))
    run_tags = {"pipeline": "reindex_documents", "documents.location": settings.documents_location, **(tags or {})}
    with tracked_run(settings, settings.reindex_experiment, tags=run_tags) as run:
        run_dir = _run_dir(settings, run.info.run_id)
        log_cleaning(run_dir, cleaning)
        report = validate_documents(documents, problems, validation_limits(settings), docs_dir=run_dir / "gx")
        report_path = report.write(settings.quarantine_dir / f"{run.info.run_id}.json")
        mlflow.log_artifact(str(report_path), "validation")
        if report.data_docs_dir and Path(report.data_docs_dir).exists():
            mlflow.log_artifacts(report.data_docs_dir, "validation/data_docs")
        mlflow.log_metrics(
            {"docs_total": report.total, "docs_valid": len(report.valid_ids), "docs_quarantined": report.invalid_count}
        )
        mlflow.set_tag("validation", report.summary())
        if report.hard_failure:
            mlflow.set_tag("gate", "validation_failed")
        enforce(report, report_path)
        valid = set(report.valid_ids)
        stage_documents(run_dir / "documents.jsonl", [d for d in documents if d.id in valid])
        # Each quarantined document with the ACL its new version declares: a stricter ACL must take
        # effect even though the new text is not indexed (the old, looser chunks are withdrawn).
        declared = declared_acls(documents, valid)
        quarantined = {q.document: declared.get(q.document) for q in report.quarantine}
        (run_dir / "quarantined.json").write_text(json.dumps(quarantined))
        # Files that could not be read keep every document they held: unreadable is not deleted.
        unreadable = sorted({p.source or p.path for p in problems})
        (run_dir / "unreadable_sources.json").write_text(json.dumps(unreadable))
        url = run_url(settings, run.info.experiment_id, run.info.run_id)
        log.info("validated: %s; MLflow run: %s", report.summary(), url)
        return str(run.info.run_id)


def log_cleaning(run_dir: Path, cleaning: CleaningReport) -> None:
    """Record what boilerplate removal cut: per-document counts as an artifact, totals as metrics."""
    import mlflow

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLEANING
    path.write_text(json.dumps(cleaning.as_dict(), ensure_ascii=False, indent=1))
    mlflow.log_artifact(str(path), "cleaning")
    mlflow.log_params({f"boilerplate_{k}": v for k, v in cleaning.rule.items()})
    mlflow.log_metrics({k: float(v) for k, v in cleaning.totals().items()})
    log.info("boilerplate removal: %s", cleaning.totals())


def declared_acls(documents: Sequence[Document], valid: Collection[str]) -> dict[str, list[str] | None]:
    """Each quarantined document id -> the ACL its new version declares (None: it cannot be trusted).

    Copies of one id that declare different ACLs (a new drop beside an old file) declare none we can
    trust: None, so the old version is withdrawn, whichever copy happens to sort last.
    """
    declared: dict[str, list[str] | None] = {}
    for document in documents:
        if document.id not in valid:
            acl = list(document.acl)
            declared[document.id] = acl if declared.get(document.id, acl) == acl else None
    return declared


def version_step(settings: Settings, run_id: str) -> dict[str, str]:
    """Record the validated snapshot with DVC and tag the run with its hash and git revision."""
    import mlflow
    from pipelines.tracking import git_revision
    from pipelines.versioning import DataVersion, snapshot

    is_local = not settings.documents_url and (settings.data_dir.parent / ".dvc").is_dir()
    if is_local:
        if "dvc_add" in settings.crash_at.split(","):
            kill_dvc_mid_add(settings)
        version = snapshot(settings.data_dir.parent, settings.data_dir.name)
    else:  # an external source is versioned where it lives; record what we can
        version = DataVersion("n/a (external source)", git_revision(settings.project_dir), "")
    tags = version.tags()
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        mlflow.set_tags(tags)
    (_run_dir(settings, run_id) / "version.json").write_text(json.dumps(tags))
    return tags


def kill_dvc_mid_add(settings: Settings) -> None:
    """Crash point `dvc_add`: SIGKILL a running `dvc add` once it holds its locks, then this process."""
    import signal
    import subprocess
    import sys

    repo = settings.data_dir.parent
    child = subprocess.Popen([sys.executable, "-m", "dvc", "add", "--quiet", settings.data_dir.name], cwd=repo)
    rwlock, deadline = repo / ".dvc" / "tmp" / "rwlock", time.monotonic() + 30
    while time.monotonic() < deadline and child.poll() is None:
        if rwlock.exists() and f'"pid": {child.pid}' in rwlock.read_text():
            break  # it holds its write lock on data/: kill it there
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    crash_point(settings, "dvc_add")


def chunker_config(settings: Settings) -> ChunkerConfig:
    return ChunkerConfig(settings.embedding_model_path, settings.chunk_tokens, settings.chunk_overlap)


def embed_and_write(
    settings: Settings,
    client: Any,
    collection: str,
    chunks: ChunkSpool,
    generation: int,
    embedder: Embedder,
    cache: VectorCache,
    crash_at: str,
) -> tuple[int, float]:
    """Embed (or take from the cache) and write `chunks` one page at a time. Returns (embedded, seconds embedding).

    A page's vectors are cached before it is written, so a crashed run's successor embeds only the pages it
    never reached; no more than one page of vectors (and of chunk text) is ever held (issue 12).
    """
    embedded, embed_s = 0, 0.0
    for page in chunks.pages(settings.write_page_size):
        started = time.perf_counter()
        vectors, fresh = vectors_for(page, embedder, cache)
        embed_s += time.perf_counter() - started
        idx.upsert_chunks(client, collection, page, vectors, generation, settings.write_page_size)
        embedded += fresh
        crash_point(settings, crash_at)
    return embedded, embed_s


def vectors_for(chunks: Sequence[Chunk], embedder: Embedder, cache: VectorCache) -> tuple[np.ndarray, int]:
    """Vectors for `chunks`: from the cache where known, else from the encoder. Returns (vectors, embedded)."""
    cached = cache.get_many(embedder.signature, [c.content_hash for c in chunks])
    missing = list({c.content_hash: c for c in chunks if c.content_hash not in cached}.values())
    if missing:
        fresh = embedder.embed([c.embedding_text for c in missing], progress=len(missing) > 200)
        cache.put_many(embedder.signature, zip([c.content_hash for c in missing], fresh, strict=True))
        cached.update({c.content_hash: v for c, v in zip(missing, fresh, strict=True)})
    dim = embedder.model.get_embedding_dimension()
    vectors = np.stack([cached[c.content_hash] for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
    return vectors, len(missing)


@contextmanager
def _client(settings: Settings, client: Any = None) -> Iterator[Any]:
    """The caller's Weaviate client, or a new connection for this call."""
    if client is not None:
        yield client
    else:
        with idx.connect(settings) as own:
            yield own


def _read_run_inputs(
    run_dir: Path,
) -> tuple[StagedDocuments, dict[str, list[str] | None], list[str], dict[str, str]]:
    documents = StagedDocuments(run_dir / "documents.jsonl")
    if not documents.path.is_file():  # fail here, before Weaviate is touched, not in the first pass
        raise FileNotFoundError(f"{documents.path}: the run staged no documents; was its validate step run?")
    raw_quarantined = json.loads((run_dir / "quarantined.json").read_text())
    # A list (older runs, benchmarks): ACLs unknown, so a quarantined document's old version is withdrawn.
    quarantined = raw_quarantined if isinstance(raw_quarantined, dict) else dict.fromkeys(raw_quarantined)
    unreadable_path = run_dir / "unreadable_sources.json"
    unreadable = json.loads(unreadable_path.read_text()) if unreadable_path.exists() else []
    version = json.loads((run_dir / "version.json").read_text()) if (run_dir / "version.json").exists() else {}
    return documents, quarantined, unreadable, version


def _load_live_manifest(settings: Settings, live: str | None) -> tuple[IndexManifest | None, str | None]:
    """The live collection's manifest, or None with the reason a full rebuild is needed."""
    if live is None:
        return None, None
    try:
        manifest = IndexManifest.load(settings.manifest_dir, live)
    except ManifestCorrupt as err:
        log.error("manifest of %s is corrupt, rebuilding the index in full: %s", live, err)
        return None, f"corrupt manifest: {err}"
    if manifest is None:
        return None, f"no manifest for {live}"
    return manifest, None


def reconcile(
    settings: Settings, client: Any, collection: str, manifest: IndexManifest, readers_at: int | None = None
) -> dict[str, int]:
    """Make the collection hold exactly the manifest's chunks, visible at its generation.

    Finishes a committed run's clean-up and undoes everything an uncommitted one left (a crash,
    a rejected or failed run), then compares ids: orphans are deleted, and documents with a
    missing chunk are dropped from `manifest` so the next plan writes them again. Cheap: a few
    filtered deletes and one id-only scan.
    """
    found: dict[str, int] = {}
    readers_at = idx.live_generation(client, collection) if readers_at is None else readers_at
    if readers_at is None:
        raise idx.IndexingError(f"{collection} predates generations")
    if readers_at > manifest.generation:
        raise idx.IndexingError(f"{collection} is at generation {readers_at}, ahead of its manifest")
    if readers_at < manifest.generation:  # killed between the commit and switching readers: roll forward
        idx.update_description(client, collection, generation=manifest.generation)
        found["rolled_forward"] = 1
    found.update(_undo_uncommitted(client, collection, manifest.generation))
    found["retired_deleted"] = _collect_retired(client, collection, manifest.generation, settings.delete_page_size)
    if manifest.pending_moves:
        idx.update_positions(client, collection, manifest.pending_moves)
        found["moves_applied"] = len(manifest.pending_moves)
        manifest.pending_moves = {}
        manifest.save(settings.manifest_dir)
    present, expected = set(idx.all_ids(client, collection)), manifest.chunk_ids
    orphans, missing = sorted(present - expected), expected - present
    if orphans:
        found["orphans_deleted"] = idx.delete_objects(client, collection, orphans, settings.delete_page_size)
    if missing:
        damaged = [d for d, e in manifest.documents.items() if any(c.uuid in missing for c in e.chunks)]
        log.warning(
            "%d chunks of %d documents are missing from %s; re-writing them", len(missing), len(damaged), collection
        )
        for doc_id in damaged:  # re-planned as new: all their chunks are written again as the next generation
            del manifest.documents[doc_id]
        found["missing_chunks"] = len(missing)
    changed = {k: v for k, v in found.items() if v}
    if changed:
        log.warning("reconciled %s with its manifest: %s", collection, changed)
    return found


def _undo_uncommitted(client: Any, collection: str, generation: int) -> dict[str, int]:
    """Delete chunks written after `generation` and un-retire chunks retired after it."""
    from weaviate.classes.query import Filter

    return {
        "uncommitted_deleted": idx.delete_where(
            client, collection, Filter.by_property("gen_from").greater_than(generation)
        ),
        "retirements_reset": idx.reset_retirements(client, collection, above=generation),
    }


def _collect_retired(
    client: Any, collection: str, generation: int, page_size: int = 500, after_page: Any = None
) -> int:
    """Delete chunks retired at or before the committed `generation` (readers no longer see them)."""
    from weaviate.classes.query import Filter

    retired = Filter.by_property("gen_to").greater_than(0) & Filter.by_property("gen_to").less_or_equal(generation)
    target = client.collections.use(collection)
    deleted = 0
    while True:  # deleted objects drop out of the filter: the first page is always the next one
        page = [
            str(o.uuid)
            for o in target.query.fetch_objects(filters=retired, limit=page_size, return_properties=[]).objects
        ]
        if not page:
            return deleted
        deleted += idx.delete_objects(client, collection, page, page_size)
        if after_page:
            after_page(deleted)


def _drop_unfinished(settings: Settings, client: Any) -> list[str]:
    """Remove collections a killed or rejected full rebuild left behind (never the live one)."""
    dropped = idx.unfinished_versions(client, settings.collection_alias)
    for name in dropped:
        log.warning("dropping %s: a full rebuild that never went live", name)
        client.collections.delete(name)
        IndexManifest.path_for(settings.manifest_dir, name).unlink(missing_ok=True)
    return dropped


def _guard_mass_change(
    settings: Settings, run_id: str, plan: IndexPlan, live_documents: int, allow_mass_change: bool
) -> float:
    """Stop before any write if the plan deletes or rewrites too much of what readers have."""
    import mlflow

    share = change_share(plan, live_documents)
    if share <= settings.max_change_share or allow_mass_change:
        return share  # logged with the index step's other numbers
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        mlflow.log_params({"allow_mass_change": allow_mass_change, "max_change_share": settings.max_change_share})
        mlflow.log_metric("change_share", share)
        mlflow.set_tags({"gate": "refused_mass_change"})
    examples = ", ".join((plan.deleted_docs + plan.changed_docs)[:5])
    raise MassChangeRefused(
        f"this run would delete {len(plan.deleted_docs)} and rewrite {len(plan.changed_docs)} of {live_documents} live "
        f"documents ({share:.0%} > MAX_CHANGE_SHARE {settings.max_change_share:.0%}), e.g. {examples}; nothing was "
        "written. If the drop is intended, trigger the run again with `allow_mass_change`."
    )


def _guard_rebuild_drops(
    settings: Settings, run_id: str, kept: Sequence[str], reason: str | None, allow_mass_change: bool
) -> None:
    """Refuse a full rebuild that would drop documents an incremental run keeps (unreadable or quarantined today).

    Their old chunks cannot follow into the new collection (another model or chunker made them), so the
    rebuild would delete them for readers however few they are: only a person accepts that.
    """
    import mlflow

    if not kept or allow_mass_change:
        return
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        mlflow.set_tags({"gate": "refused_rebuild_drop", "full_rebuild_reason": str(reason or "requested")})
    raise MassChangeRefused(
        f"a full rebuild ({reason or 'requested'}) would drop {len(kept)} document(s) that are unreadable or "
        f"quarantined today and kept by incremental runs, e.g. {', '.join(kept[:5])}; nothing was written. Fix "
        "them, or trigger the run again with `allow_mass_change` to rebuild without them."
    )


def index_step(
    settings: Settings,
    run_id: str,
    full_rebuild: bool = False,
    embedder: Embedder | None = None,
    allow_mass_change: bool = False,
    client: Any = None,
) -> IndexResult:
    """Stage the update as a generation readers do not see yet: in the live collection, or a new one (full)."""
    import mlflow

    run_dir = _run_dir(settings, run_id)
    documents, quarantined, unreadable, version = _read_run_inputs(run_dir)
    embedder = embedder or Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    chunker = chunker_config(settings)
    cache = VectorCache(settings.vector_cache_path)
    timings: dict[str, float] = {}
    repairs: dict[str, int] = {}
    with _client(settings, client) as client:
        started = time.perf_counter()
        dropped = _drop_unfinished(settings, client)
        live = idx.alias_target(client, settings.collection_alias)
        previous, rebuild_reason = _load_live_manifest(settings, live)
        if previous is not None and live is not None and not full_rebuild:
            if not previous.compatible_with(embedder.signature, chunker):
                rebuild_reason = "embedding model or chunker changed"
            elif (readers_at := idx.live_generation(client, live)) is None:
                rebuild_reason = f"{live} predates generations"
            else:
                repairs = reconcile(settings, client, live, previous, readers_at)
        incremental = not full_rebuild and rebuild_reason is None and previous is not None
        timings["reconcile"] = time.perf_counter() - started
        if rebuild_reason:
            log.warning("full rebuild of %s: %s", settings.collection_alias, rebuild_reason)
        started = time.perf_counter()
        if incremental:
            assert previous is not None and live is not None
            collection, base, generation = live, previous, previous.generation + 1
            plan = plan_update(documents, base, chunker, quarantined, unreadable)
            guard_plan = plan
        else:
            collection, generation = idx.new_collection_name(settings.collection_alias), 1
            base = IndexManifest(collection, embedder.signature, chunker.signature())
            plan = plan_update(documents, base, chunker, quarantined, unreadable)
            # A rebuild replaces what readers have just the same: judge it against the live manifest. Kept
            # (quarantined or unreadable) documents are not carried into a new collection: they count as deleted.
            if previous is not None:
                guard_plan = plan_update(documents, previous, chunker, quarantined, unreadable)
                _guard_rebuild_drops(settings, run_id, guard_plan.kept_docs, rebuild_reason, allow_mass_change)
                guard_plan.deleted_docs = [*guard_plan.deleted_docs, *guard_plan.kept_docs]
            else:
                guard_plan = plan
        live_documents = len(previous.documents) if previous else 0
        if previous is None and live is not None:  # manifest lost or corrupt: ask Weaviate what readers have
            live_ids = idx.live_document_ids(client, live)
            present = {d.id for d in documents}
            guard_plan = replace(plan, deleted_docs=sorted(live_ids - present), changed_docs=[])
            live_documents = len(live_ids)
        share = _guard_mass_change(settings, run_id, guard_plan, live_documents, allow_mass_change)
        if guard_plan.to_write is not plan.to_write:
            guard_plan.to_write.close()  # only its counts were needed
        timings["plan_and_chunk"] = time.perf_counter() - started
        crash_point(settings, "after_plan")
        started = time.perf_counter()
        try:
            if not incremental:
                # Generation 0 until the commit: even a direct query of the new collection sees nothing unevaluated.
                idx.create_collection(
                    client, collection, {"run_id": run_id, **version, "state": idx.BUILDING, "generation": 0}
                )
            point = "mid_write" if incremental else "full_mid_write"
            embedded, timings["embed"] = embed_and_write(
                settings, client, collection, plan.to_write, generation, embedder, cache, point
            )
        finally:
            cache.close()
            plan.to_write.close()
        crash_point(settings, "after_write")
        if incremental:  # full rebuilds start empty: nothing to retire
            idx.retire_objects(
                client,
                collection,
                plan.to_delete,
                generation,
                after_page=lambda _n: crash_point(settings, "mid_retire"),
                page_size=settings.write_page_size,
            )
        timings["write"] = time.perf_counter() - started - timings["embed"]  # pages interleave the two
        if plan.to_write or plan.to_delete:
            (run_dir / WRITTEN_AT).write_text(str(time.time()))
        plan.manifest.generation = generation
        plan.manifest.pending_moves = dict(plan.to_move)
        plan.manifest.data_version = {"run_id": run_id, **version}
        plan.manifest.write(run_dir / CANDIDATE, durable=False)  # lost in a crash: the run simply failed
    counts = {**plan.counts(), "collections_dropped": len(dropped), **{f"reconcile_{k}": v for k, v in repairs.items()}}
    if (run_dir / CLEANING).exists():  # the run's summary shows what boilerplate removal cut
        cleaning = json.loads((run_dir / CLEANING).read_text())
        counts.update({k: int(v) for k, v in cleaning.items() if k.startswith("boilerplate_")})
    mode = "incremental" if incremental else "full"
    result = IndexResult(collection, mode, counts, timings, embedded, generation, generation - 1 if incremental else 0)
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        mlflow.log_params(
            {
                "mode": result.mode,
                "collection": collection,
                "embedding_model": embedder.signature,
                "chunk_tokens": chunker.chunk_tokens,
                "chunk_overlap": chunker.overlap_tokens,
                "allow_mass_change": allow_mass_change,
                "max_change_share": settings.max_change_share,
            }
        )
        mlflow.log_metrics(
            {
                **{k: float(v) for k, v in counts.items()},
                "chunks_embedded": float(embedded),
                "change_share": share,
                **{f"time_{k}_s": v for k, v in timings.items()},
            }
        )
        if rebuild_reason:
            mlflow.set_tag("full_rebuild_reason", rebuild_reason[:500])
        mlflow.log_dict(asdict(result), "index/result.json")
    log.info("staged generation %d in %s (%s): %s, embedded %d", generation, collection, mode, counts, embedded)
    crash_point(settings, "after_index")
    return result


def commit_index(
    settings: Settings, run_id: str, result: IndexResult, client: Any = None
) -> tuple[str | None, list[str]]:
    """Make the staged generation what readers see; returns (alias target, dropped old versions).

    The manifest written to `manifest_dir` is the commit point: a crash after it rolls forward
    on the next run (`reconcile`), a crash before it rolls back.
    """
    manifest = IndexManifest.read(_run_dir(settings, run_id) / CANDIDATE)
    if manifest is None:
        raise idx.IndexingError(f"run {run_id} staged no manifest; was its index step run?")
    with _client(settings, client) as client:
        crash_point(settings, "before_commit")
        _check_still_staged(settings, client, result)
        if result.mode == "full":
            manifest.save(settings.manifest_dir)
            idx.update_description(
                client, result.collection, **manifest.data_version, state=idx.ACCEPTED, generation=manifest.generation
            )
            idx.point_alias(client, settings.collection_alias, result.collection)
            crash_point(settings, "full_after_alias")
            dropped = idx.drop_old_versions(client, settings.collection_alias, settings.collections_to_keep)
            for name in dropped:
                IndexManifest.path_for(settings.manifest_dir, name).unlink(missing_ok=True)
            return idx.alias_target(client, settings.collection_alias), dropped
        idx.assert_no_stale_retirements(client, result.collection, manifest.generation)
        manifest.save(settings.manifest_dir)
        crash_point(settings, "after_commit")
        idx.update_description(
            client, result.collection, **manifest.data_version, state=idx.ACCEPTED, generation=manifest.generation
        )
        crash_point(settings, "after_publish")
        _collect_retired(
            client,
            result.collection,
            manifest.generation,
            settings.delete_page_size,
            after_page=lambda _n: crash_point(settings, "mid_gc"),
        )
        if manifest.pending_moves:
            idx.update_positions(client, result.collection, manifest.pending_moves)
            crash_point(settings, "before_moves_cleared")
            manifest.pending_moves = {}
            manifest.save(settings.manifest_dir)
        return idx.alias_target(client, settings.collection_alias), []


def _check_still_staged(settings: Settings, client: Any, result: IndexResult) -> None:
    """Refuse to commit or discard a staged generation that is no longer the one waiting (a re-run task).

    A cleared `evaluate` of an old run must neither undo a generation that was committed since, nor
    publish a stale candidate over a newer one.
    """
    if result.mode == "full":
        if idx.describe(client, result.collection).get("state") == idx.ACCEPTED or result.collection == (
            idx.alias_target(client, settings.collection_alias)
        ):
            raise idx.IndexingError(f"{result.collection} was already accepted; nothing to commit or discard")
        return
    committed = IndexManifest.load(settings.manifest_dir, result.collection)
    if committed is None or committed.generation != result.live_generation:
        found = None if committed is None else committed.generation
        raise idx.IndexingError(
            f"{result.collection} is at generation {found}, not {result.live_generation} as when this run staged "
            f"generation {result.generation}: another run committed since; re-run the whole DAG run instead"
        )


def discard_index(settings: Settings, result: IndexResult, client: Any = None) -> None:
    """Undo a staged generation the gate rejected: the live collection is left exactly as it was."""
    with _client(settings, client) as client:
        _check_still_staged(settings, client, result)
        if result.mode == "full":  # never swapped in; remove so it cannot be rolled back to by mistake
            client.collections.delete(result.collection)
            IndexManifest.path_for(settings.manifest_dir, result.collection).unlink(missing_ok=True)
        else:
            _undo_uncommitted(client, result.collection, result.live_generation)


def gate_baselines(settings: Settings, exclude_run: str) -> list[Baseline]:
    """The runs the gate compares with: the last accepted run, and the pinned reference run.

    The reference is the run named by the experiment tag `retrieval.reference_run_id` (set by a
    person with `pipelines pin-reference`), by default the first accepted run. An MLflow error
    raises: a gate that cannot read its baseline must not pass.
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(settings.reindex_experiment)
    if experiment is None:
        return []

    def accepted(order: str) -> Any:
        runs = mlflow.search_runs(
            [experiment.experiment_id],
            "tags.gate = 'accepted'",
            order_by=[f"start_time {order}"],
            max_results=2,
            output_format="list",
        )
        return next((r for r in runs if r.info.run_id != exclude_run), None)

    baselines = []
    last = accepted("DESC")
    if last is not None:
        baselines.append(Baseline("last accepted run", dict(last.data.metrics), last.info.run_id))
    pinned = experiment.tags.get(REFERENCE_TAG)
    reference = mlflow.get_run(pinned) if pinned else accepted("ASC")
    if reference is not None and (last is None or reference.info.run_id != last.info.run_id):
        baselines.append(Baseline("reference run", dict(reference.data.metrics), reference.info.run_id))
    return baselines


def pin_reference(settings: Settings, run_id: str | None = None) -> str:
    """Pin the reference run of the retrieval gate (default: the last accepted run); returns its id."""
    import mlflow
    from pipelines.tracking import configure

    configure(settings)
    experiment = mlflow.get_experiment_by_name(settings.reindex_experiment)
    if experiment is None:
        raise idx.IndexingError(f"no experiment {settings.reindex_experiment!r}: run a re-index first")
    if run_id is None:
        found = mlflow.search_runs(
            [experiment.experiment_id],
            "tags.gate = 'accepted'",
            order_by=["start_time DESC"],
            max_results=1,
            output_format="list",
        )
        if not found:
            raise idx.IndexingError("no accepted run to pin")
        run_id = str(found[0].info.run_id)
    elif mlflow.get_run(run_id).data.tags.get("gate") != "accepted":
        raise idx.IndexingError(f"run {run_id} was not accepted by the gate; only accepted runs can be the reference")
    mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, REFERENCE_TAG, run_id)
    return run_id


def plot_history(settings: Settings, path: Path) -> Path | None:
    """nDCG@10 / Recall@10 / MRR of every evaluated run, oldest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import mlflow

    experiment = mlflow.get_experiment_by_name(settings.reindex_experiment)
    if experiment is None:
        return None
    runs = mlflow.search_runs(
        [experiment.experiment_id],
        "metrics.hybrid_ndcg_at_10 >= 0",
        order_by=["start_time ASC"],
        max_results=200,
        output_format="list",
    )
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for metric in ("hybrid_ndcg_at_10", "hybrid_recall_at_10", "hybrid_mrr", "vector_ndcg_at_10", "bm25_ndcg_at_10"):
        values = [r.data.metrics.get(metric, float("nan")) for r in runs]
        ax.plot(range(1, len(runs) + 1), values, marker="o", label=metric)
    ax.set_xlabel("run")
    ax.set_ylabel("score")
    ax.set_title("Retrieval quality over re-indexing runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def wait_until_settled(settings: Settings, run_id: str) -> float:
    """Sleep until `settle_wait_s` after the index step's last write; returns the seconds waited.

    Keyword scores on writes still in a memtable are skewed; measuring then would gate on numbers
    no reader sees (see `Settings.weaviate_memtable_flush_s` for how long a flush can take).
    """
    marker = _run_dir(settings, run_id) / WRITTEN_AT
    if not marker.exists():
        return 0.0
    remaining = float(marker.read_text()) + settings.settle_wait_s - time.time()
    if remaining > 0:
        log.info("waiting %.1fs for Weaviate to flush the run's writes before measuring", remaining)
        time.sleep(remaining)
    return max(0.0, remaining)


def evaluate_step(
    settings: Settings, run_id: str, result: IndexResult, embedder: Embedder | None = None
) -> ReindexReport:
    """Measure the staged generation, gate it, and commit it (readers switch) or discard it (nothing changes)."""
    waited = wait_until_settled(settings, run_id)
    golden = load_golden(settings.golden_set_dir)
    embedder = embedder or Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    with idx.connect(settings) as client:  # one connection: measure, then commit or discard
        retriever = Retriever(
            client, embedder, result.collection, settings.hybrid_alpha, result.generation, enforce_acl=False
        )
        report = evaluate_retrieval(retriever, golden)

        def live_baseline() -> Baseline | None:
            return _live_baseline(settings, client, embedder, golden, result)

        return _gate_and_apply(settings, run_id, result, report, waited, client, live_baseline)


def _live_baseline(
    settings: Settings, client: Any, embedder: Embedder, golden: Any, result: IndexResult
) -> Baseline | None:
    """What readers get now, measured on the golden set: the baseline when MLflow holds no accepted run.

    None only when nothing is live (the first run). An MLflow store that was reset, a renamed
    experiment or deleted runs must not read as "first run" while an index is being served: the
    candidate is then held against the live index instead of passing unexamined.
    """
    live = idx.alias_target(client, settings.collection_alias)
    if live is None:
        return None
    generation = result.live_generation if live == result.collection else idx.live_generation(client, live)
    retriever = Retriever(client, embedder, live, settings.hybrid_alpha, generation, enforce_acl=False)
    metrics = evaluate_retrieval(retriever, golden).flat()
    log.warning(
        "no accepted run in %s while %s serves %s: gating against the live index",
        settings.reindex_experiment,
        settings.collection_alias,
        live,
    )
    return Baseline(f"live index {live}, as no accepted run is in MLflow;", metrics, "")


def _gate_and_apply(
    settings: Settings,
    run_id: str,
    result: IndexResult,
    report: Any,
    waited: float,
    client: Any,
    live_baseline: Callable[[], Baseline | None],
) -> ReindexReport:
    import mlflow

    metrics = report.flat()
    metrics["golden_queries"] = float(len(report.per_query.get("hybrid", {})))
    metrics["time_settle_wait_s"] = waited
    lat = sorted(report.latencies_ms)
    metrics["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat else 0.0
    metrics["latency_p95_ms"] = float(np.percentile(lat, 95)) if lat else 0.0
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        baselines = gate_baselines(settings, exclude_run=run_id)
        if not baselines and (live := live_baseline()) is not None:
            baselines = [live]
            mlflow.set_tag("gate_baseline", "live index (no accepted run)")
        decision = gate(metrics, baselines, settings.retrieval_tolerance)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report.per_query, "evaluation/per_query.json")
        mlflow.set_tag("gate_reasons", "; ".join(decision.reasons)[:5000])
        target: str | None = None
        dropped: list[str] = []
        if decision.passed:
            target, dropped = commit_index(settings, run_id, result, client)
            mlflow.set_tags({"gate": "accepted", "alias_target": str(target), "generation": str(result.generation)})
        else:
            discard_index(settings, result, client)
            mlflow.set_tag("gate", "rejected")
        plot = plot_history(settings, _run_dir(settings, run_id) / "retrieval_history.png")
        if plot:
            mlflow.log_artifact(str(plot), "plots")
    if not decision.passed:
        raise QualityGateFailed("; ".join(decision.reasons) + "; readers keep the previous index")
    return ReindexReport(run_id, result, metrics, decision, target, dropped)


def run_reindex(
    settings: Settings,
    full_rebuild: bool = False,
    tags: Mapping[str, str] | None = None,
    embedder: Embedder | None = None,
    allow_mass_change: bool = False,
) -> ReindexReport:
    """All four steps in one process (the CLI and tests; the DAG runs them as tasks)."""
    embedder = embedder or Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    run_id = validate_step(settings, tags)
    version_step(settings, run_id)
    result = index_step(settings, run_id, full_rebuild, embedder, allow_mass_change)
    return evaluate_step(settings, run_id, result, embedder)
