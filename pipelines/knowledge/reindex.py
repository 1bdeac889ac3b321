"""The daily re-indexing job, as four steps the DAG runs as tasks.

validate -> version -> index -> evaluate & gate. Steps pass only a run id and a
collection name; the validated batch is staged under `state/runs/<run id>/`, so
every step sees exactly the documents that passed validation, whatever lands in
the source meanwhile. One MLflow run spans the steps.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.failures import QualityGateFailed
from pipelines.knowledge import index as idx
from pipelines.knowledge.chunking import Chunk, ChunkerConfig
from pipelines.knowledge.documents import Document, load_documents
from pipelines.knowledge.embedding import Embedder, VectorCache
from pipelines.knowledge.evaluation import GateDecision, evaluate_retrieval, gate, load_golden
from pipelines.knowledge.manifest import IndexManifest, plan_update
from pipelines.knowledge.retrieval import Retriever
from pipelines.knowledge.validation import ValidationLimits, enforce, validate_documents
from pipelines.settings import Settings
from pipelines.tracking import airflow_tags, run_url, tracked_run

log = logging.getLogger(__name__)


@dataclass
class IndexResult:
    """What the index step did (small: goes through XCom as a dict)."""

    collection: str
    mode: str
    counts: dict[str, int]
    timings_s: dict[str, float]
    chunks_embedded: int


@dataclass
class ReindexReport:
    """The outcome of a whole run."""

    run_id: str
    index: IndexResult
    metrics: dict[str, float]
    decision: GateDecision
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


def _run_dir(settings: Settings, run_id: str) -> Path:
    return settings.state_dir / "runs" / run_id


def _limits(settings: Settings) -> ValidationLimits:
    return ValidationLimits(
        settings.min_text_chars, settings.max_text_chars, settings.max_invalid_share, tuple(settings.pii_patterns)
    )


def stage_documents(path: Path, documents: Sequence[Document]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for document in documents:
            out.write(json.dumps(asdict(document), ensure_ascii=False) + "\n")


def read_staged(path: Path) -> list[Document]:
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    return [Document(**{**row, "acl": tuple(row["acl"])}) for row in rows]


def validate_step(settings: Settings, context: Mapping[str, Any] | None = None) -> str:
    """Load and validate today's documents; stage the valid ones. Returns the MLflow run id.

    A hard failure raises `ValidationFailed` here, before Weaviate is touched.
    """
    import mlflow

    documents, problems = load_documents(settings.documents_location)
    tags = {"pipeline": "reindex_documents", "documents.location": settings.documents_location}
    with tracked_run(settings, settings.reindex_experiment, tags={**tags, **airflow_tags(context)}) as run:
        run_dir = _run_dir(settings, run.info.run_id)
        report = validate_documents(documents, problems, _limits(settings), docs_dir=run_dir / "gx")
        report_path = report.write(settings.quarantine_dir / f"{run.info.run_id}.json")
        mlflow.log_artifact(str(report_path), "validation")
        if report.data_docs_dir and Path(report.data_docs_dir).exists():
            mlflow.log_artifacts(report.data_docs_dir, "validation/data_docs")
        mlflow.log_metrics({"docs_total": report.total, "docs_valid": len(report.valid_ids),
                            "docs_quarantined": report.invalid_count})  # fmt: skip
        mlflow.set_tag("validation", report.summary())
        if report.hard_failure:
            mlflow.set_tag("gate", "validation_failed")
        enforce(report, report_path)
        valid = set(report.valid_ids)
        stage_documents(run_dir / "documents.jsonl", [d for d in documents if d.id in valid])
        quarantined = sorted({q.document for q in report.quarantine})
        (run_dir / "quarantined.json").write_text(json.dumps(quarantined))
        url = run_url(settings, run.info.experiment_id, run.info.run_id)
        log.info("validated: %s; MLflow run: %s", report.summary(), url)
        return str(run.info.run_id)


def version_step(settings: Settings, run_id: str) -> dict[str, str]:
    """Record the validated snapshot with DVC and tag the run with its hash and git revision."""
    import mlflow
    from pipelines.tracking import git_revision
    from pipelines.versioning import snapshot

    is_local = not settings.documents_url and (settings.data_dir.parent / ".dvc").is_dir()
    if is_local:
        version = snapshot(settings.data_dir)
        tags = {"data.dvc_hash": version.dvc_hash, "git_revision": version.git_revision}
    else:  # an external source is versioned where it lives; record what we can
        tags = {"data.dvc_hash": "n/a (external source)", "git_revision": git_revision(settings.project_dir)}
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        mlflow.set_tags(tags)
    (_run_dir(settings, run_id) / "version.json").write_text(json.dumps(tags))
    return tags


def chunker_config(settings: Settings) -> ChunkerConfig:
    return ChunkerConfig(settings.embedding_model_path, settings.chunk_tokens, settings.chunk_overlap)


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


def index_step(
    settings: Settings, run_id: str, full_rebuild: bool = False, embedder: Embedder | None = None
) -> IndexResult:
    """Bring the index up to date: incrementally in the live collection, or a full build into a new one."""
    import mlflow

    run_dir = _run_dir(settings, run_id)
    documents = read_staged(run_dir / "documents.jsonl")
    quarantined = json.loads((run_dir / "quarantined.json").read_text())
    version = json.loads((run_dir / "version.json").read_text()) if (run_dir / "version.json").exists() else {}
    embedder = embedder or Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    chunker = chunker_config(settings)
    cache = VectorCache(settings.vector_cache_path)
    timings: dict[str, float] = {}
    with idx.connect(settings) as client:
        live = idx.alias_target(client, settings.collection_alias)
        previous = IndexManifest.load(settings.manifest_dir, live) if live else None
        incremental = (
            not full_rebuild and previous is not None and previous.compatible_with(embedder.signature, chunker)
        )
        if incremental:
            assert previous is not None and live is not None
            collection, base = live, previous
        else:
            if previous is not None and not full_rebuild:
                log.warning("embedding model or chunker changed since %s: full rebuild", live)
            collection = idx.new_collection_name(settings.collection_alias)
            idx.create_collection(client, collection, {"run_id": run_id, **version})
            base = IndexManifest(collection, embedder.signature, chunker.signature())
        try:
            started = time.perf_counter()
            plan = plan_update(documents, base, chunker, quarantined)
            timings["plan_and_chunk"] = time.perf_counter() - started
            started = time.perf_counter()
            vectors, embedded = vectors_for(plan.to_write, embedder, cache)
            timings["embed"] = time.perf_counter() - started
            started = time.perf_counter()
            # Writes first, deletes after: a reader sees the old or the new version, never neither.
            idx.upsert_chunks(client, collection, plan.to_write, vectors)
            idx.update_positions(client, collection, plan.to_move)
            timings["write"] = time.perf_counter() - started
            started = time.perf_counter()
            idx.delete_objects(client, collection, plan.to_delete, settings.delete_page_size)
            timings["delete"] = time.perf_counter() - started
            if plan.to_write or plan.to_move or plan.to_delete:
                (run_dir / WRITTEN_AT).write_text(str(time.time()))
        except Exception:
            if not incremental:  # a half-built new collection is never left behind
                client.collections.delete(collection)
            raise
        finally:
            cache.close()
        started = time.perf_counter()
        plan.manifest.data_version = {"run_id": run_id, **version}
        plan.manifest.save(settings.manifest_dir)
        idx.set_description(client, collection, plan.manifest.data_version)
        counts = {**plan.counts(), "chunks_in_collection": idx.count_objects(client, collection)}
        timings["finalize"] = time.perf_counter() - started
    result = IndexResult(collection, "incremental" if incremental else "full", counts, timings, embedded)
    with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
        mlflow.log_params({"mode": result.mode, "collection": collection, "embedding_model": embedder.signature,
                           "chunk_tokens": chunker.chunk_tokens, "chunk_overlap": chunker.overlap_tokens})  # fmt: skip
        mlflow.log_metrics({**{k: float(v) for k, v in counts.items()}, "chunks_embedded": float(embedded),
                            **{f"time_{k}_s": v for k, v in timings.items()}})  # fmt: skip
        mlflow.log_dict(asdict(result), "index/result.json")
    log.info("indexed into %s (%s): %s, embedded %d", collection, result.mode, counts, embedded)
    return result


def last_accepted_metrics(settings: Settings, exclude_run: str) -> tuple[dict[str, float] | None, str | None]:
    """Metrics of the most recent accepted run: the baseline of the gate."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(settings.reindex_experiment)
    if experiment is None:
        return None, None
    runs = mlflow.search_runs(
        [experiment.experiment_id], "tags.gate = 'accepted'", order_by=["start_time DESC"], max_results=5,
        output_format="list",
    )  # fmt: skip
    for run in runs:
        if run.info.run_id != exclude_run:
            return dict(run.data.metrics), run.info.run_id
    return None, None


def plot_history(settings: Settings, path: Path) -> Path | None:
    """nDCG@10 / Recall@10 / MRR of every evaluated run, oldest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import mlflow

    experiment = mlflow.get_experiment_by_name(settings.reindex_experiment)
    if experiment is None:
        return None
    runs = mlflow.search_runs([experiment.experiment_id], "metrics.hybrid_ndcg_at_10 >= 0",
                              order_by=["start_time ASC"], max_results=200, output_format="list")  # fmt: skip
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
    """Sleep until `weaviate_settle_s` after the index step's last write; returns the seconds waited.

    Weaviate takes BM25's average property lengths from flushed segments, so keyword scores on
    writes still in a memtable are skewed; measuring then would gate on numbers no reader sees.
    """
    marker = _run_dir(settings, run_id) / WRITTEN_AT
    if not marker.exists():
        return 0.0
    remaining = float(marker.read_text()) + settings.weaviate_settle_s - time.time()
    if remaining > 0:
        log.info("waiting %.1fs for Weaviate to flush the run's writes before measuring", remaining)
        time.sleep(remaining)
    return max(0.0, remaining)


def evaluate_step(
    settings: Settings, run_id: str, collection: str, mode: str, embedder: Embedder | None = None
) -> ReindexReport:
    """Evaluate the collection, gate it against the last accepted run, and go live if it passes."""
    import mlflow

    waited = wait_until_settled(settings, run_id)

    manifest = IndexManifest.load(settings.manifest_dir, collection)
    indexed = set(manifest.documents) if manifest else set()
    golden = load_golden(settings.golden_set_dir).covering(indexed)
    embedder = embedder or Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    with idx.connect(settings) as client:
        report = evaluate_retrieval(Retriever(client, embedder, collection, settings.hybrid_alpha), golden)
        metrics = report.flat()
        metrics["golden_queries"] = float(len(golden.queries))
        metrics["time_settle_wait_s"] = waited
        lat = sorted(report.latencies_ms)
        metrics["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat else 0.0
        metrics["latency_p95_ms"] = float(np.percentile(lat, 95)) if lat else 0.0
        with tracked_run(settings, settings.reindex_experiment, run_id=run_id):
            baseline, baseline_run = last_accepted_metrics(settings, exclude_run=run_id)
            if golden.queries:
                decision = gate(metrics, baseline, settings.retrieval_tolerance, baseline_run)
            else:
                decision = GateDecision(True, ["no golden query covers the indexed documents: quality not measured"])
            mlflow.log_metrics(metrics)
            mlflow.log_dict(report.per_query, "evaluation/per_query.json")
            mlflow.set_tag("gate_reasons", "; ".join(decision.reasons)[:5000])
            target, dropped = None, []
            if decision.passed:
                if mode == "full":
                    idx.point_alias(client, settings.collection_alias, collection)
                    dropped = idx.drop_old_versions(client, settings.collection_alias, settings.collections_to_keep)
                target = idx.alias_target(client, settings.collection_alias)
                mlflow.set_tags({"gate": "accepted", "alias_target": str(target)})
            else:
                mlflow.set_tag("gate", "rejected")
                if mode == "full":  # never swapped in; remove so it cannot be rolled back to by mistake
                    client.collections.delete(collection)
                    IndexManifest.path_for(settings.manifest_dir, collection).unlink(missing_ok=True)
            plot = plot_history(settings, _run_dir(settings, run_id) / "retrieval_history.png")
            if plot:
                mlflow.log_artifact(str(plot), "plots")
    if not decision.passed:
        raise QualityGateFailed("; ".join(decision.reasons))
    dummy = IndexResult(collection, mode, {}, {}, 0)
    return ReindexReport(run_id, dummy, metrics, decision, target, dropped)


def run_reindex(settings: Settings, full_rebuild: bool = False, context: Mapping[str, Any] | None = None,
                embedder: Embedder | None = None) -> ReindexReport:  # fmt: skip
    """All four steps in one process (the CLI and tests; the DAG runs them as tasks)."""
    embedder = embedder or Embedder(settings.embedding_model_path, settings.embedding_batch_size)
    run_id = validate_step(settings, context)
    version_step(settings, run_id)
    result = index_step(settings, run_id, full_rebuild, embedder)
    report = evaluate_step(settings, run_id, result.collection, result.mode, embedder)
    report.index = result
    return report
