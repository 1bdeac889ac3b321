"""Knowledge layer, fail closed (issue 9): rejected runs, mass changes and unreadable files, on real services."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests_support import create_text_collection, sample_reports, write_reports

from pipelines.failures import MassChangeRefused, QualityGateFailed
from pipelines.knowledge import index as idx
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.manifest import IndexManifest
from pipelines.knowledge.reindex import pin_reference, run_reindex
from pipelines.knowledge.retrieval import Retriever
from pipelines.settings import Settings

N_REPORTS = 8
FILLER = "filler nothing particular memo note item thing stuff matter point aside remark".split()


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
    queries: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:  # a reader querying the live index all through the run
        try:
            with idx.connect(indexed) as client:
                retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha)
                while not stop.is_set():
                    seen.extend(h.text for h in retriever.search(marker, k=3, mode="bm25"))
                    queries.append(time.time())
                    time.sleep(0.01)
        except BaseException as err:  # noqa: BLE001 - reported below: a dead reader checks nothing
            errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    strict = indexed.model_copy(update={"retrieval_tolerance": -1.0})  # demands +1.0 nDCG: must be rejected
    try:
        with pytest.raises(QualityGateFailed, match="readers keep the previous index"):
            run_reindex(strict, embedder=embedder)
    finally:
        stop.set()
        thread.join()
    assert not errors, f"the reader failed: {errors[0]!r}"
    assert len(queries) > 50, "the reader ran too few queries to observe the run"
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


def test_a_query_that_read_the_generation_just_before_a_commit_sees_one_whole_version(
    indexed: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader reads the live generation, then queries; a commit landing in between (its clean-up deleting the
    retired chunks) must not serve part of a document, or none of one that exists before and after. The commit
    is run at exactly that moment, from the reader's own generation read, so the interleaving is certain."""
    from pipelines.knowledge.reindex import commit_index, index_step, validate_step, version_step

    with idx.connect(indexed) as client:
        retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha)
        target = sample_reports(N_REPORTS)[2]["_id"]  # public, like every sample report

        def chunks_of_target() -> set[str]:  # vector mode with a large k: every chunk of the document
            return {h.chunk_id for h in retriever.search("report", k=200, mode="vector", filters={"doc_id": target})}

        old = chunks_of_target()
        assert len(old) > 1, "the document needs several chunks to be served in part"
        rows = sample_reports(N_REPORTS)
        rows[2]["text"] = rows[2]["text"].replace(". ", ". Report revised. ")  # most chunks change: new ids
        write_reports(_docs_dir(indexed), rows)
        run_id = validate_step(indexed)
        version_step(indexed, run_id)
        staged = index_step(indexed, run_id, embedder=embedder, client=client)

        reads = 0
        original = idx.live_generation

        def generation_then_commit(client_: Any, collection: str) -> int | None:
            nonlocal reads
            reads += 1
            seen = original(client_, collection)
            if reads == 1:  # the reader holds the old generation; the commit and its clean-up run now
                commit_index(indexed, run_id, staged, client)
            return seen

        monkeypatch.setattr(idx, "live_generation", generation_then_commit)
        served = chunks_of_target()
        monkeypatch.undo()
        now = chunks_of_target()
    assert reads >= 2, "the reader never read the generation again after its query"
    assert now and now != old, "the rewrite did not change the document's chunks"
    assert served in (old, now), (
        f"served part of a version: {len(served & old)} of {len(old)} old chunks, {len(served & now)} of {len(now)} new"
    )


def test_chunks_being_retired_stay_visible_to_readers_of_the_live_generation(
    indexed: Settings, embedder: Embedder
) -> None:
    """A run marks obsolete chunks `gen_to = G+1` while readers are at G: they must keep seeing every one.

    Weaviate re-indexes an updated property by deleting its entry and then adding the new one, so a filter
    that names the values a chunk passes through misses it now and then; the retirements are toggled for
    seconds, which found 10 to 68 misses in about 3,000 reads with the earlier filter.
    """
    with idx.connect(indexed) as client:
        live = idx.alias_target(client, indexed.collection_alias)
        assert live is not None
        generation = idx.live_generation(client, live)
        assert generation is not None
        retriever = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha)
        target = sample_reports(N_REPORTS)[3]["_id"]
        chunks = [h.chunk_id for h in retriever.search("report", k=200, mode="vector", filters={"doc_id": target})]
        assert len(chunks) > 1
        served: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader() -> None:
            try:
                with idx.connect(indexed) as own:
                    mine = Retriever(own, embedder, indexed.collection_alias, indexed.hybrid_alpha)
                    while not stop.is_set():
                        hits = mine.search("report", k=200, mode="vector", filters={"doc_id": target})
                        served.append(len(hits))
            except BaseException as err:  # noqa: BLE001 - reported below: a dead reader checks nothing
                errors.append(err)

        thread = threading.Thread(target=reader)
        thread.start()
        started, toggles = time.monotonic(), 0
        try:
            while time.monotonic() - started < 5:  # retire as the next run would, then undo as a rejection does
                idx.retire_objects(client, live, chunks, generation + 1)
                idx.retire_objects(client, live, chunks, 0)
                toggles += 1
        finally:
            stop.set()
            thread.join()
    assert not errors, f"the reader failed: {errors[0]!r}"
    assert len(served) > 200 and toggles > 20, "too few reads or retirements to observe the race"
    partial = [n for n in served if n != len(chunks)]
    assert not partial, f"{len(partial)} of {len(served)} reads missed chunks of a live document: {partial[:5]}"


def test_a_commit_is_refused_while_a_retirement_older_than_the_live_generation_is_stored(
    indexed: Settings, embedder: Embedder
) -> None:
    """Readers hide retirements by value near the live generation; an older one left behind must stop the
    commit (readers keep what they had), not reappear to readers once the window has moved past it."""
    from pipelines.knowledge.reindex import commit_index, index_step, validate_step, version_step

    rows = sample_reports(N_REPORTS)
    rows[1]["text"] += "\n\nA late correction to the figures."
    write_reports(_docs_dir(indexed), rows)
    with idx.connect(indexed) as client:
        live = idx.alias_target(client, indexed.collection_alias)
        assert live is not None
        before = idx.live_generation(client, live)
        assert before is not None
        run_id = validate_step(indexed)
        version_step(indexed, run_id)
        staged = index_step(indexed, run_id, embedder=embedder, client=client)
        kept = next(iter(live_manifest(indexed).chunk_ids))  # a live chunk, marked as retired long ago
        client.collections.use(live).data.update(uuid=kept, properties={"gen_to": before})
        with pytest.raises(idx.IndexingError, match="retired before generation"):
            commit_index(indexed, run_id, staged, client)
        assert idx.live_generation(client, live) == before


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
    refused = mlflow.search_runs(
        experiment_names=[whole_corpus.reindex_experiment],
        filter_string="tags.gate = 'refused_mass_change'",
        output_format="list",
    )
    assert len(refused) == 1 and refused[0].data.params["allow_mass_change"] == "False"

    # A person allows it: the guard steps aside, and the gate still refuses, because the golden
    # queries of the 41 vanished reports count as misses instead of disappearing from the mean.
    with pytest.raises(QualityGateFailed, match="hybrid_ndcg_at_10 fell"):
        run_reindex(whole_corpus, embedder=embedder, allow_mass_change=True)
    assert snapshot_collection(whole_corpus) == before


@pytest.mark.measures_quality
def test_gate_compares_with_the_reference_run_so_quality_cannot_drift_down(
    indexed: Settings, embedder: Embedder
) -> None:
    import mlflow

    first_run = mlflow.search_runs(experiment_names=[indexed.reindex_experiment], output_format="list")[0]
    # A bad day that a lenient operator let through: every report's title and text replaced by filler. Each
    # report gets its own filler: text shared by every document is page chrome and cut at ingest (issue 14).
    filler = [
        {**row, "title": f"Memo {i}", "text": " ".join(random.Random(i).choice(FILLER) for _ in range(180)) + "."}
        for i, row in enumerate(sample_reports(N_REPORTS))
    ]
    write_reports(_docs_dir(indexed), filler)
    lenient = indexed.model_copy(update={"retrieval_tolerance": 1.0})
    worse = run_reindex(lenient, embedder=embedder, allow_mass_change=True)
    drop = first_run.data.metrics["hybrid_ndcg_at_10"] - worse.metrics["hybrid_ndcg_at_10"]
    assert worse.accepted and drop > 0.05
    # The next run changes nothing: it equals the last accepted run, yet the gate holds it against the
    # reference (by default the first accepted run), so the earlier slide cannot become the new normal.
    strict = indexed.model_copy(update={"retrieval_tolerance": drop / 2})
    with pytest.raises(QualityGateFailed) as failed:
        run_reindex(strict, embedder=embedder)
    fell = [reason for reason in str(failed.value).split("; ") if " fell from " in reason]
    assert fell and all(f"(reference run {first_run.info.run_id})" in reason for reason in fell)
    # A person who accepts the new level pins it as the reference; then the same run passes.
    assert pin_reference(indexed, worse.run_id) == worse.run_id
    assert run_reindex(strict, embedder=embedder).accepted


def test_unreadable_file_deletes_nothing(indexed: Settings, embedder: Embedder) -> None:
    # Page-chrome removal off: which spans count as shared depends on the documents read, so a torn file
    # changes the other documents' cleaned text (a rewrite the mass-change guard weighs); here only deletion
    # is under test. Turning it off rewrites the already indexed reports once, hence the override.
    settings = indexed.model_copy(update={"boilerplate_min_documents": 10**6})
    for row in sample_reports(N_REPORTS + 6)[N_REPORTS:]:  # other files beside the JSONL, as in any real corpus
        (_docs_dir(settings) / f"{row['_id']}.md").write_text(f"# {row['title']}\n\n{row['text']}")
    assert run_reindex(settings, embedder=embedder, allow_mass_change=True).accepted
    before = snapshot_collection(settings)
    path = _docs_dir(settings) / "reports.jsonl"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])  # a torn copy: the last row is cut, the rest of the file is missing
    report = run_reindex(settings, embedder=embedder)
    assert report.index.counts["docs_deleted"] == 0
    assert report.index.counts["docs_kept_quarantined"] >= 1
    assert snapshot_collection(indexed) == before
    quarantine = json.loads((indexed.quarantine_dir / f"{report.run_id}.json").read_text())
    assert any(q["document"].startswith("reports.jsonl:") for q in quarantine["quarantine"])


@pytest.mark.measures_quality
def test_a_full_rebuild_that_would_drop_an_unreadable_document_is_refused(
    indexed: Settings, embedder: Embedder
) -> None:
    settings = indexed.model_copy(update={"boilerplate_min_documents": 10**6})  # as above: only deletion is tested
    (_docs_dir(settings) / "memo.md").write_text("# Memo\n\n" + sample_reports(N_REPORTS + 1)[-1]["text"])
    assert run_reindex(settings, embedder=embedder, allow_mass_change=True).accepted
    before = snapshot_collection(settings)
    (_docs_dir(settings) / "memo.md").write_bytes(b"# Memo\n\n" + bytes(range(256)) * 16)  # unreadable today
    # The chunker changes the same day: incremental runs would keep memo.md, a rebuild cannot carry it.
    rechunked = settings.model_copy(update={"chunk_tokens": settings.chunk_tokens - 40})
    with pytest.raises(MassChangeRefused, match=r"full rebuild \(embedding model or chunker changed\) would drop 1"):
        run_reindex(rechunked, embedder=embedder)
    assert snapshot_collection(settings) == before  # nothing written, readers keep memo.md
    # A person who accepts the loss says so, and the rebuild goes ahead without it.
    report = run_reindex(rechunked, embedder=embedder, allow_mass_change=True)
    assert report.accepted and report.index.mode == "full"
    assert not any(p["doc_id"] == "memo.md" for p in snapshot_collection(settings).values())


@pytest.mark.measures_quality
def test_corrupt_manifest_triggers_a_logged_full_rebuild(indexed: Settings, embedder: Embedder) -> None:
    import mlflow

    manifest = live_manifest(indexed)
    path = IndexManifest.path_for(indexed.manifest_dir, manifest.collection)
    path.write_text(path.read_text()[:100])
    report = run_reindex(indexed, embedder=embedder)
    assert report.accepted and report.index.mode == "full"
    assert mlflow.get_run(report.run_id).data.tags["full_rebuild_reason"].startswith("corrupt manifest")
    assert set(snapshot_collection(indexed)) == live_manifest(indexed).chunk_ids


def test_stricter_acl_takes_effect_even_when_the_new_version_is_quarantined(
    indexed: Settings, embedder: Embedder
) -> None:
    docs = _docs_dir(indexed)
    (docs / "plans.md").write_text("# Reorg plans\n\nThe Brindlewood office merges into finance next spring.")
    assert run_reindex(indexed, embedder=embedder).accepted
    assert any(p["doc_id"] == "plans.md" for p in snapshot_collection(indexed).values())
    # The owner restricts it to hr, and the same edit trips the secret check: the new version is quarantined.
    (docs / "plans.md").write_text(
        "---\nacl: [hr]\n---\n# Reorg plans\n\nThe Brindlewood office merges into finance. "
        "password: hunter2-very-secret"
    )
    report = run_reindex(indexed, embedder=embedder)
    assert report.accepted and report.index.counts["docs_withdrawn_acl"] == 1
    assert not any(p["doc_id"] == "plans.md" for p in snapshot_collection(indexed).values())
    with idx.connect(indexed) as client:
        hits = Retriever(client, embedder, indexed.collection_alias, indexed.hybrid_alpha).search(
            "Brindlewood office merges", k=5, user_groups=["finance"]
        )
    assert "plans.md" not in {h.doc_id for h in hits}


@pytest.fixture
def probe_collection(kb: Settings) -> Any:
    """A small collection of six objects on the session's real Weaviate; its shard is made READY again after."""
    name = f"{kb.collection_alias}Probe"
    with idx.connect(kb) as client:
        collection = create_text_collection(client, name)
        ids = [str(collection.data.insert({"text": f"chunk {i}"}, vector=[1.0, float(i), 0.0])) for i in range(6)]
        try:
            yield client, name, ids
        finally:
            collection.config.update_shards(status="READY")
            client.collections.delete(name)


def test_deletes_weaviate_refuses_fail_the_run_and_leave_the_objects(probe_collection: Any) -> None:
    client, name, ids = probe_collection
    collection = client.collections.use(name)
    collection.config.update_shards(status="READONLY")  # a real refusal: the shard will not take writes
    with pytest.raises(idx.IndexingError, match=r"^3 deletions failed in .* after 3 attempts"):
        idx.delete_objects(client, name, ids[:3])
    with pytest.raises(idx.IndexingError, match=r"deletions failed in .* after 3 attempts"):
        idx.delete_where(client, name, _ids_filter(ids[3:]))
    collection.config.update_shards(status="READY")
    assert idx.count_objects(client, name) == 6  # nothing reported as deleted that is not


def test_a_delete_failure_that_clears_is_retried_until_every_object_is_gone(probe_collection: Any) -> None:
    client, name, ids = probe_collection
    collection = client.collections.use(name)
    collection.config.update_shards(status="READONLY")

    class ReopenOnRetry(logging.Handler):
        """The shard takes writes again once the first failure is logged: the failure clears between attempts."""

        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage():
                collection.config.update_shards(status="READY")

    handler = ReopenOnRetry(level=logging.WARNING)
    logging.getLogger(idx.__name__).addHandler(handler)
    try:
        assert idx.delete_objects(client, name, ids[:3], page_size=2) == 3
        assert idx.count_objects(client, name) == 3
        collection.config.update_shards(status="READONLY")
        assert idx.delete_where(client, name, _ids_filter(ids[3:])) == 3
    finally:
        logging.getLogger(idx.__name__).removeHandler(handler)
    assert idx.count_objects(client, name) == 0


def _ids_filter(ids: list[str]) -> Any:
    from weaviate.classes.query import Filter

    return Filter.by_id().contains_any(ids)


@pytest.mark.measures_quality
def test_a_reset_tracking_store_does_not_let_a_worse_index_pass_as_the_first_run(
    indexed: Settings, embedder: Embedder
) -> None:
    # The tracking store lost its history (a reset database, a renamed experiment): no accepted run to compare with,
    # while readers are served the indexed reports. A filler drop must be held against what they get now.
    # The fixture's tolerance (0.15) absorbs the filler's drop on 8 reports; the default (0.02) does not.
    reset = indexed.model_copy(
        update={"reindex_experiment": f"{indexed.reindex_experiment}-reset", "retrieval_tolerance": 0.02}
    )
    filler = [
        {**row, "title": f"Memo {i}", "text": " ".join(random.Random(i).choice(FILLER) for _ in range(180)) + "."}
        for i, row in enumerate(sample_reports(N_REPORTS))
    ]
    before = snapshot_collection(indexed)
    write_reports(_docs_dir(indexed), filler)
    with pytest.raises(QualityGateFailed, match=r"fell from .*live index .*no accepted run is in MLflow"):
        run_reindex(reset, embedder=embedder, allow_mass_change=True)
    assert snapshot_collection(indexed) == before  # readers keep the reports
    # The reports themselves pass against the live index, and become the new experiment's first accepted run.
    write_reports(_docs_dir(indexed), sample_reports(N_REPORTS))
    assert run_reindex(reset, embedder=embedder).accepted
