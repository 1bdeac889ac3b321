"""Knowledge layer, fail closed (issue 9): rejected runs, mass changes and unreadable files, on real services."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests_support import sample_reports, write_reports

from pipelines.failures import MassChangeRefused, QualityGateFailed
from pipelines.knowledge import index as idx
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.manifest import IndexManifest
from pipelines.knowledge.reindex import pin_reference, run_reindex
from pipelines.knowledge.retrieval import Retriever
from pipelines.settings import Settings

N_REPORTS = 8


def _docs_dir(settings: Settings) -> Path:
    return settings.data_dir / "documents"


def snapshot_collection(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every object of the live collection: id -> properties (what a reader could ever be served)."""
    with idx.connect(settings) as client:
        collection = client.collections.use(settings.collection_alias)
        return {str(o.uuid): dict(o.properties) for o in collection.iterator()}


def live_manifest(settings: Settings) -> IndexManifest:
    with idx.connect(settings) as client:
        live = idx.alias_target(client, settings.collection_alias)
    manifest = IndexManifest.load(settings.manifest_dir, live or "")
    assert manifest is not None
    return manifest


@pytest.fixture
def indexed(kb: Settings, embedder: Embedder) -> Settings:
    write_reports(_docs_dir(kb), sample_reports(N_REPORTS))
    assert run_reindex(kb, embedder=embedder).accepted
    return kb


def test_rejected_incremental_run_leaves_the_live_collection_identical(indexed: Settings, embedder: Embedder) -> None:
    before = snapshot_collection(indexed)
    manifest_path = IndexManifest.path_for(indexed.manifest_dir, live_manifest(indexed).collection)
    manifest_before = manifest_path.read_text()
    rows = sample_reports(N_REPORTS)
    marker = "Quixotic zeppelin arbitrage"
    rows[0]["text"] = f"{marker} " + rows[0]["text"].replace(". ", f". {marker}. ")  # every chunk of one doc changes
    write_reports(_docs_dir(indexed), rows)
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:  # a reader querying the live index all through the run
        with idx.connect(indexed) as client:
            retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha)
            while not stop.is_set():
                seen.extend(h.text for h in retriever.search(marker, k=3, mode="bm25"))
                time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    strict = indexed.model_copy(update={"retrieval_tolerance": -1.0})  # demands +1.0 nDCG: must be rejected
    try:
        with pytest.raises(QualityGateFailed, match="readers keep the previous index"):
            run_reindex(strict, embedder=embedder)
    finally:
        stop.set()
        thread.join()
    assert not [t for t in seen if marker in t], "a reader was served a chunk of the rejected run"
    assert snapshot_collection(indexed) == before, "ids or properties of the live collection changed"
    assert manifest_path.read_text() == manifest_before


def test_accepted_incremental_run_becomes_visible_at_once(indexed: Settings, embedder: Embedder) -> None:
    rows = sample_reports(N_REPORTS)
    rows[1]["text"] += "\n\nThe Vexillological crumpet index rose sharply."
    write_reports(_docs_dir(indexed), rows)
    report = run_reindex(indexed, embedder=embedder)
    assert report.accepted and report.index.mode == "incremental"
    with idx.connect(indexed) as client:
        hits = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha).search(
            "Vexillological crumpet index", k=1, mode="bm25"
        )
    assert hits and "crumpet" in hits[0].text
    ids = set(snapshot_collection(indexed))
    assert ids == live_manifest(indexed).chunk_ids, "retired chunks were not cleaned up after the commit"


@pytest.fixture
def whole_corpus(kb: Settings, embedder: Embedder) -> Settings:
    """The 42 shared reports indexed, with the real golden set measuring them."""
    write_reports(_docs_dir(kb), sample_reports(42))
    assert run_reindex(kb, embedder=embedder).accepted
    return kb


def test_drop_that_leaves_one_of_42_documents_is_refused_before_writing(
    whole_corpus: Settings, embedder: Embedder
) -> None:
    import mlflow

    before = snapshot_collection(whole_corpus)
    write_reports(_docs_dir(whole_corpus), sample_reports(1))
    with pytest.raises(MassChangeRefused, match=r"delete 41 and rewrite 0 of 42 live documents"):
        run_reindex(whole_corpus, embedder=embedder)
    assert snapshot_collection(whole_corpus) == before
    refused = mlflow.search_runs(experiment_names=[whole_corpus.reindex_experiment], filter_string=
                                 "tags.gate = 'refused_mass_change'", output_format="list")  # fmt: skip
    assert len(refused) == 1 and refused[0].data.params["allow_mass_change"] == "False"

    # A person allows it: the guard steps aside, and the gate still refuses, because the golden
    # queries of the 41 vanished reports count as misses instead of disappearing from the mean.
    with pytest.raises(QualityGateFailed, match="hybrid_ndcg_at_10 fell"):
        run_reindex(whole_corpus, embedder=embedder, allow_mass_change=True)
    assert snapshot_collection(whole_corpus) == before


def test_gate_compares_with_the_pinned_reference_so_quality_cannot_drift_down(
    indexed: Settings, embedder: Embedder
) -> None:
    import mlflow

    reference = pin_reference(indexed)
    tolerance = 0.15  # the kb fixture's tolerance
    # Each run loses a little (one report's text replaced by filler), less than the tolerance per run.
    rows = sample_reports(N_REPORTS)
    scores = [mlflow.get_run(reference).data.metrics["hybrid_ndcg_at_10"]]
    with pytest.raises(QualityGateFailed, match="reference run"):
        for i in range(N_REPORTS):
            rows[i]["text"] = "Filler paragraph about nothing in particular. " * 20
            write_reports(_docs_dir(indexed), rows)
            scores.append(run_reindex(indexed, embedder=embedder).metrics["hybrid_ndcg_at_10"])
    # Every accepted run was within the tolerance of the previous one, but not of the reference.
    assert all(b >= a - tolerance for a, b in zip(scores, scores[1:], strict=False))
    assert scores[-1] < scores[0]


def test_unreadable_file_deletes_nothing(indexed: Settings, embedder: Embedder) -> None:
    before = snapshot_collection(indexed)
    path = _docs_dir(indexed) / "reports.jsonl"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])  # a torn copy: the last row is cut, the rest of the file is missing
    report = run_reindex(indexed, embedder=embedder)
    assert report.index.counts["docs_deleted"] == 0
    assert report.index.counts["docs_kept_quarantined"] >= 1
    assert snapshot_collection(indexed) == before
    quarantine = json.loads((indexed.quarantine_dir / f"{report.run_id}.json").read_text())
    assert any(q["document"].startswith("reports.jsonl:") for q in quarantine["quarantine"])


def test_corrupt_manifest_triggers_a_logged_full_rebuild(indexed: Settings, embedder: Embedder) -> None:
    import mlflow

    manifest = live_manifest(indexed)
    path = IndexManifest.path_for(indexed.manifest_dir, manifest.collection)
    path.write_text(path.read_text()[:100])
    report = run_reindex(indexed, embedder=embedder)
    assert report.accepted and report.index.mode == "full"
    assert mlflow.get_run(report.run_id).data.tags["full_rebuild_reason"].startswith("corrupt manifest")
    assert set(snapshot_collection(indexed)) == live_manifest(indexed).chunk_ids
