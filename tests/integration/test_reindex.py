"""Daily re-indexing against a real Weaviate, MLflow and DVC (issues 3 and 6)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tests_support import create_text_collection, sample_reports, write_reports

from pipelines.knowledge import index as idx
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.manifest import IndexManifest
from pipelines.knowledge.reindex import QualityGateFailed, run_reindex
from pipelines.knowledge.retrieval import Retriever
from pipelines.knowledge.validation import ValidationFailed
from pipelines.settings import Settings

N_REPORTS = 8


def _docs_dir(settings: Settings) -> Path:
    return settings.data_dir / "documents"


def _doc_chunks(settings: Settings, doc_id: str) -> list[dict]:
    from weaviate.classes.query import Filter

    with idx.connect(settings) as client:
        result = client.collections.use(settings.collection_alias).query.fetch_objects(
            filters=Filter.by_property("doc_id").equal(doc_id), limit=1000
        )
        return [o.properties for o in result.objects]


def _count(settings: Settings) -> int:
    with idx.connect(settings) as client:
        return idx.count_objects(client, settings.collection_alias)


def _alias(settings: Settings) -> str | None:
    with idx.connect(settings) as client:
        return idx.alias_target(client, settings.collection_alias)


@pytest.fixture
def indexed(kb: Settings, embedder: Embedder) -> Settings:
    """A knowledge base with N_REPORTS reports indexed once."""
    write_reports(_docs_dir(kb), sample_reports(N_REPORTS))
    report = run_reindex(kb, embedder=embedder)
    assert report.accepted and report.index.mode == "full"
    return kb


def test_first_run_indexes_and_an_unchanged_rerun_embeds_nothing(indexed: Settings, embedder: Embedder) -> None:
    before = _count(indexed)
    assert before > N_REPORTS
    again = run_reindex(indexed, embedder=embedder)
    assert again.index.mode == "incremental"
    assert again.index.chunks_embedded == 0
    assert again.index.counts["docs_unchanged"] == N_REPORTS
    assert _count(indexed) == before


def test_every_run_is_traceable_to_its_data(indexed: Settings) -> None:
    import mlflow

    manifest_files = list(indexed.manifest_dir.glob("*.json"))
    version = json.loads(manifest_files[0].read_text())["data_version"]
    run = mlflow.get_run(version["run_id"])
    assert run.data.tags["data.dvc_hash"] == version["data.dvc_hash"]
    assert version["data.dvc_hash"].endswith(".dir")
    assert run.data.tags["gate"] == "accepted"
    for metric in ("hybrid_ndcg_at_10", "vector_recall_at_10", "bm25_mrr", "docs_valid", "chunks_embedded"):
        assert metric in run.data.metrics
    with idx.connect(indexed) as client:
        described = idx.describe(client, _alias(indexed) or "")
    assert described["data.dvc_hash"] == version["data.dvc_hash"]
    assert (indexed.data_dir.parent / "data.dvc").exists()


def test_modified_document_replaces_its_old_text(indexed: Settings, embedder: Embedder) -> None:
    rows = sample_reports(N_REPORTS)
    target = rows[2]
    paragraphs = target["text"].split("\n\n")
    old = paragraphs[1]
    paragraphs[1] = "Zorblax turbines cut the quillon ledger costs by ninety percent in Fenwick county."
    target["text"] = "\n\n".join(paragraphs)
    write_reports(_docs_dir(indexed), rows)
    report = run_reindex(indexed, embedder=embedder)
    assert report.index.counts["docs_changed"] == 1 and report.index.counts["docs_unchanged"] == N_REPORTS - 1
    texts = [c["text"] for c in _doc_chunks(indexed, target["_id"])]
    assert not any(old in text for text in texts)
    with idx.connect(indexed) as client:
        retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha)
        hits = retriever.search("Zorblax turbines quillon ledger", k=1, mode="bm25")
    assert hits[0].doc_id == target["_id"] and "Zorblax" in hits[0].text


def test_deleted_document_disappears(indexed: Settings, embedder: Embedder) -> None:
    rows = sample_reports(N_REPORTS)
    gone = rows.pop(0)
    write_reports(_docs_dir(indexed), rows)
    report = run_reindex(indexed, embedder=embedder)
    assert report.index.counts["docs_deleted"] == 1
    assert _doc_chunks(indexed, gone["_id"]) == []


def test_bad_documents_are_quarantined_while_good_ones_are_indexed(indexed: Settings, embedder: Embedder) -> None:
    docs = _docs_dir(indexed)
    (docs / "empty.md").write_text("")
    (docs / "secret.md").write_text("# Deploy notes\n\nUse password: hunter2-very-secret to log in.")
    (docs / "fresh.md").write_text("# Fresh memo\n\nA brand new memo about supply chains in the Nordics.")
    report = run_reindex(indexed, embedder=embedder)
    assert report.accepted and report.index.counts["docs_new"] == 1
    assert _doc_chunks(indexed, "fresh.md")
    assert _doc_chunks(indexed, "empty.md") == [] and _doc_chunks(indexed, "secret.md") == []
    quarantine = json.loads((indexed.quarantine_dir / f"{report.run_id}.json").read_text())
    assert {q["document"] for q in quarantine["quarantine"]} == {"empty.md", "secret.md"}


def test_hard_validation_failure_leaves_the_live_index_untouched(indexed: Settings, embedder: Embedder) -> None:
    alias_before, count_before = _alias(indexed), _count(indexed)
    manifest_before = IndexManifest.path_for(indexed.manifest_dir, alias_before or "").read_text()
    write_reports(_docs_dir(indexed), [{"_id": f"e{i}", "title": "E", "text": ""} for i in range(20)], "reports.jsonl")
    with pytest.raises(ValidationFailed, match="20 of 20 documents failed validation"):
        run_reindex(indexed, embedder=embedder)
    assert _alias(indexed) == alias_before and _count(indexed) == count_before
    assert IndexManifest.path_for(indexed.manifest_dir, alias_before or "").read_text() == manifest_before


@pytest.mark.measures_quality
def test_full_rebuild_swaps_the_alias_only_when_the_gate_passes(indexed: Settings, embedder: Embedder) -> None:
    first = _alias(indexed)
    strict = indexed.model_copy(update={"retrieval_tolerance": -1.0})  # demands +1.0 nDCG: must fail
    with pytest.raises(QualityGateFailed):
        run_reindex(strict, full_rebuild=True, embedder=embedder)
    assert _alias(indexed) == first
    with idx.connect(indexed) as client:
        assert idx.versions(client, indexed.collection_alias) == [first]

    report = run_reindex(indexed, full_rebuild=True, embedder=embedder)
    assert report.accepted and report.alias_target != first
    assert report.index.chunks_embedded == 0, "a rebuild with the same model reuses cached vectors"
    with idx.connect(indexed) as client:
        assert idx.versions(client, indexed.collection_alias) == [first, report.alias_target]
        assert idx.rollback_alias(client, indexed.collection_alias) == first
        assert idx.alias_target(client, indexed.collection_alias) == first


def test_acl_filters_what_each_caller_can_retrieve(indexed: Settings, embedder: Embedder) -> None:
    docs = _docs_dir(indexed)
    (docs / "salaries.md").write_text(
        "---\nacl: [hr]\n---\n# Salary bands\n\nThe grommet engineers salary band is confidential."
    )
    run_reindex(indexed, embedder=embedder)
    with idx.connect(indexed) as client:
        retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha)
        public = retriever.search("grommet engineers salary band", k=20)
        finance = retriever.search("grommet engineers salary band", k=20, user_groups=["finance"])
        hr = retriever.search("grommet engineers salary band", k=20, user_groups=["hr"])
    assert "salaries.md" not in {h.doc_id for h in public + finance}
    assert hr[0].doc_id == "salaries.md" and hr[0].acl == ("hr",)
    assert all(set(h.acl) & {"public", "hr"} for h in hr)


def test_a_search_without_acls_still_applies_the_callers_filters(indexed: Settings, embedder: Embedder) -> None:
    """The gate's retriever reads every ACL; a property filter given to it must not be dropped with them."""
    with idx.connect(indexed) as client:
        retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha, enforce_acl=False)
        unfiltered = retriever.search("revenue growth outlook", k=20)
        wanted = unfiltered[-1].doc_id  # a document that is not the best match, so the filter must do the work
        for mode in ("hybrid", "vector", "bm25"):
            hits = retriever.search("revenue growth outlook", k=20, filters={"doc_id": wanted}, mode=mode)
            assert hits and {h.doc_id for h in hits} == {wanted}, f"{mode}: {[h.doc_id for h in hits]}"
    assert len({h.doc_id for h in unfiltered}) > 1


# --- issue 6: chunk-level reuse, no gap, paginated deletes ---------------------------------


def _long_report() -> dict:
    rows = sample_reports(42)
    return max(rows, key=lambda r: len(r["text"]))


def test_one_paragraph_edit_embeds_only_the_affected_chunks(indexed: Settings, embedder: Embedder) -> None:
    rows = sample_reports(N_REPORTS) + [_long_report()]
    write_reports(_docs_dir(indexed), rows)
    run_reindex(indexed, embedder=embedder)
    paragraphs = rows[-1]["text"].split("\n\n")
    paragraphs[len(paragraphs) // 2] += " Edited: the outlook was revised upward in November."
    rows[-1]["text"] = "\n\n".join(paragraphs)
    write_reports(_docs_dir(indexed), rows)
    before = embedder.texts_embedded
    report = run_reindex(indexed, embedder=embedder)
    assert report.index.counts["docs_changed"] == 1
    assert report.index.chunks_embedded == embedder.texts_embedded - before
    assert 1 <= report.index.chunks_embedded <= 1, "only the edited paragraph's chunk is embedded"
    assert len(paragraphs) > 10


def test_a_reader_always_finds_a_document_while_it_is_replaced(indexed: Settings, embedder: Embedder) -> None:
    rows = sample_reports(N_REPORTS)
    target = rows[3]
    target["text"] = target["text"].replace(". ", ". Revised. ")  # every chunk changes
    write_reports(_docs_dir(indexed), rows)
    misses, polls, stop = [], [], threading.Event()

    def poll() -> None:
        from weaviate.classes.query import Filter

        with idx.connect(indexed) as client:
            collection = client.collections.use(indexed.collection_alias)
            while not stop.is_set():
                found = collection.query.fetch_objects(
                    filters=Filter.by_property("doc_id").equal(target["_id"]), limit=1
                )
                polls.append(1)
                if not found.objects:
                    misses.append(time.time())
                time.sleep(0.005)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        report = run_reindex(indexed, embedder=embedder)
    finally:
        stop.set()
        reader.join()
    assert report.index.counts["chunks_to_delete"] > 0 and report.index.counts["chunks_to_write"] > 0
    assert len(polls) > 20
    assert not misses, f"{len(misses)} of {len(polls)} polls found nothing"


def test_deletions_span_many_pages_and_all_complete(indexed: Settings, embedder: Embedder) -> None:
    small_pages = indexed.model_copy(update={"delete_page_size": 3})
    keep = sample_reports(N_REPORTS)[:2]
    write_reports(_docs_dir(small_pages), keep)
    report = run_reindex(small_pages, embedder=embedder, allow_mass_change=True)  # 6 of 8 documents go
    assert report.index.counts["docs_deleted"] == N_REPORTS - 2
    assert report.index.counts["chunks_to_delete"] > 3 * 5
    assert {c["doc_id"] for c in _all(small_pages)} == {r["_id"] for r in keep}


def _all(settings: Settings) -> list[dict]:
    with idx.connect(settings) as client:
        return [o.properties for o in client.collections.use(settings.collection_alias).iterator()]


@pytest.mark.measures_quality
def test_the_settle_wait_covers_weaviates_flush_of_a_bulk_write_after_a_quiet_spell(kb: Settings) -> None:
    """`evaluate` measures `settle_wait_s` after the last write: by then Weaviate must have flushed it.

    Writes above 4 KiB of WAL are flushed once dirty WEAVIATE_MEMTABLE_FLUSH_S, at the shard's next
    flush check; after a quiet spell the checks are seconds apart (measured: 6.6 s, past the old 6 s).
    Smaller writes stay in the memtable for readers and gate alike, so they are not this test's case.
    """
    texts = [row["text"][:800] for row in sample_reports(N_REPORTS)] * 8  # 64 objects, well over 4 KiB
    name = f"{kb.collection_alias}Settle"
    with idx.connect(kb) as client:
        collection = create_text_collection(client, name)
        try:
            time.sleep(3)  # quiet: the shard's flush checks back off
            with collection.batch.fixed_size(100) as batch:
                for i, text in enumerate(texts):
                    batch.add_object({"text": text}, vector=[1.0, float(i), 0.0])
            written, flushed_after = time.time(), None
            while time.time() - written < kb.settle_wait_s + 5:
                nodes = client.cluster.nodes(collection=name, output="verbose")
                # The nodes API counts flushed segments only.
                if sum(s.object_count for node in nodes for s in node.shards if s.collection == name) == len(texts):
                    flushed_after = time.time() - written
                    break
                time.sleep(0.1)
        finally:
            client.collections.delete(name)
    assert flushed_after is not None, f"not flushed {kb.settle_wait_s + 5:.1f} s after the write"
    assert flushed_after <= kb.settle_wait_s, (
        f"flushed {flushed_after:.1f} s after the write; the gate waits {kb.settle_wait_s} s"
    )


def test_a_rebuild_embeds_and_writes_one_page_at_a_time(
    indexed: Settings, embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vectors are held a page at a time, not for the whole corpus (issue 12), and the result is the same."""
    # An empty vector cache, so every chunk goes through the encoder; pages of 5.
    settings = indexed.model_copy(update={"write_page_size": 5, "vector_cache_file": tmp_path / "vectors.sqlite"})
    events: list[tuple[str, int]] = []
    real_embed, real_upsert = embedder.embed, idx.upsert_chunks

    def embed(texts: list[str], progress: bool = False):  # type: ignore[no-untyped-def]
        events.append(("embed", len(texts)))
        return real_embed(texts, progress)

    def upsert(client, collection, chunks, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append(("write", len(chunks)))
        return real_upsert(client, collection, chunks, *args, **kwargs)

    monkeypatch.setattr(embedder, "embed", embed)
    monkeypatch.setattr(idx, "upsert_chunks", upsert)
    report = run_reindex(settings, embedder=embedder, full_rebuild=True)
    assert report.accepted and report.index.mode == "full"
    chunks = report.index.counts["chunks_to_write"]
    assert chunks > 10 and report.index.chunks_embedded == chunks
    assert max(n for kind, n in events if kind == "embed") <= 5, f"the encoder got more than a page: {events}"
    assert sum(n for kind, n in events if kind == "write") == chunks
    # Interleaved: the first page is written before the second is embedded.
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["embed", "write", "embed"], kinds[:6]
    assert _count(settings) == chunks
