"""Planning an update from the manifest: what to write, move and delete."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.knowledge.chunking import Chunk, ChunkerConfig, chunk_document
from pipelines.knowledge.documents import Document
from pipelines.knowledge.manifest import IndexManifest, ManifestCorrupt, change_share, plan_update
from pipelines.knowledge.reindex import StagedDocuments, stage_documents
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def config() -> ChunkerConfig:
    return ChunkerConfig(Settings().embedding_model_path, chunk_tokens=60, overlap_tokens=10, min_tokens=8)


def _doc(doc_id: str, n: int = 4, edit: int | None = None) -> Document:
    paragraphs = [" ".join(f"{doc_id} para{p} word{i}" for i in range(12)) for p in range(n)]
    if edit is not None:
        paragraphs[edit] = paragraphs[edit].replace("word5", "edited")
    return Document(doc_id, f"Title {doc_id}", "\n\n".join(paragraphs), "md")


def _indexed(docs: list[Document], config: ChunkerConfig) -> IndexManifest:
    empty = IndexManifest("C_1", "model", config.signature())
    return plan_update(docs, empty, config).manifest


def test_first_plan_writes_every_chunk(config: ChunkerConfig) -> None:
    plan = plan_update([_doc("a"), _doc("b")], IndexManifest("C_1", "model", config.signature()), config)
    assert plan.new_docs == ["a", "b"] and len(plan.to_write) == plan.manifest.chunk_count > 0


def test_unchanged_documents_cost_nothing(config: ChunkerConfig) -> None:
    docs = [_doc("a"), _doc("b")]
    plan = plan_update(docs, _indexed(docs, config), config)
    assert plan.unchanged_docs == ["a", "b"]
    assert not plan.to_write and not plan.to_delete and not plan.to_move


def test_one_paragraph_edit_writes_one_chunk_and_deletes_one(config: ChunkerConfig) -> None:
    previous = _indexed([_doc("a", n=8)], config)
    plan = plan_update([_doc("a", n=8, edit=3)], previous, config)
    assert plan.changed_docs == ["a"]
    assert len(plan.to_write) == 1 and len(plan.to_delete) == 1


def test_deleted_document_loses_all_its_chunks(config: ChunkerConfig) -> None:
    previous = _indexed([_doc("a"), _doc("b")], config)
    plan = plan_update([_doc("a")], previous, config)
    assert plan.deleted_docs == ["b"]
    assert set(plan.to_delete) == {c.uuid for c in previous.documents["b"].chunks}


def test_quarantined_document_keeps_its_indexed_version(config: ChunkerConfig) -> None:
    previous = _indexed([_doc("a"), _doc("b")], config)
    plan = plan_update([_doc("a")], previous, config, quarantined={"b": ["public"]})
    assert plan.kept_docs == ["b"] and not plan.to_delete
    assert plan.manifest.documents["b"] == previous.documents["b"]


def _restricted(doc_id: str, acl: tuple[str, ...]) -> Document:
    return replace(_doc(doc_id), acl=acl)


@pytest.mark.parametrize(
    ("old_acl", "declared", "kept"),
    [
        (("hr", "finance"), ["hr"], False),  # tightened: the old, looser chunks must go
        (("public",), ["hr"], False),  # public -> restricted
        (("hr",), ["hr", "finance"], True),  # loosened: the old, stricter version is safe to keep
        (("hr",), ["public"], True),
        (("hr",), [], False),  # an empty ACL reads as "nobody": stricter than anything
        (("hr",), None, False),  # the new ACL could not be read: never assume it allows the old readers
    ],
)
def test_quarantined_document_with_a_stricter_acl_is_withdrawn(
    config: ChunkerConfig, old_acl: tuple[str, ...], declared: list[str] | None, kept: bool
) -> None:
    previous = _indexed([_doc("a"), _restricted("b", old_acl)], config)
    plan = plan_update([_doc("a")], previous, config, quarantined={"b": declared})
    assert (plan.kept_docs == ["b"]) is kept
    assert (plan.withdrawn_docs == ["b"]) is not kept
    old_chunks = {c.uuid for c in previous.documents["b"].chunks}
    assert (set(plan.to_delete) == old_chunks) is not kept


def test_documents_of_an_unreadable_file_are_kept_not_deleted(config: ChunkerConfig) -> None:
    docs = [replace(_doc(d), source="reports.jsonl") for d in ("a", "b")] + [replace(_doc("c"), source="c.md")]
    previous = _indexed(docs, config)
    # reports.jsonl could not be read today: its documents are missing from the batch, not deleted.
    plan = plan_update([docs[2]], previous, config, unreadable_sources=["reports.jsonl"])
    assert sorted(plan.kept_docs) == ["a", "b"] and not plan.deleted_docs and not plan.to_delete
    # ...while a file that is simply gone deletes its documents.
    gone = plan_update([docs[2]], previous, config)
    assert sorted(gone.deleted_docs) == ["a", "b"]


def test_documents_under_a_folder_that_could_not_be_listed_are_kept(config: ChunkerConfig) -> None:
    docs = [replace(_doc("a"), source="hr/a.md"), replace(_doc("b"), source="hr/deep/b.md")]
    docs += [replace(_doc("c"), source="hr-archive/c.md")]
    previous = _indexed(docs, config)
    plan = plan_update([], previous, config, unreadable_sources=["hr/"])
    assert sorted(plan.kept_docs) == ["a", "b"] and plan.deleted_docs == ["c"]  # a sibling prefix is not inside
    whole = plan_update([], previous, config, unreadable_sources=["/"])  # the root itself could not be listed
    assert sorted(whole.kept_docs) == ["a", "b", "c"] and not whole.to_delete


def test_corrupt_manifest_is_reported_not_crashed_on(tmp_path: Path, config: ChunkerConfig) -> None:
    manifest = _indexed([_doc("a")], config)
    path = manifest.save(tmp_path)
    path.write_text(path.read_text()[: len(path.read_text()) // 2])  # torn write of an older version
    with pytest.raises(ManifestCorrupt, match="C_1.json"):
        IndexManifest.load(tmp_path, "C_1")


def test_change_share_counts_deletions_and_rewrites_of_live_documents(config: ChunkerConfig) -> None:
    docs = [_doc(f"d{i}") for i in range(10)]
    previous = _indexed(docs, config)
    plan = plan_update([*docs[:7], _doc("d7", edit=1), _doc("new")], previous, config)
    assert change_share(plan, len(previous.documents)) == pytest.approx(3 / 10)  # d7 rewritten, d8 d9 deleted


def test_manifest_round_trips_and_detects_incompatible_settings(tmp_path: Path, config: ChunkerConfig) -> None:
    manifest = _indexed([_doc("a")], config)
    manifest.save(tmp_path)
    loaded = IndexManifest.load(tmp_path, "C_1")
    assert loaded == manifest
    assert loaded.compatible_with("model", config)
    assert not loaded.compatible_with("other-model", config)
    assert not loaded.compatible_with("model", ChunkerConfig(config.tokenizer, chunk_tokens=120))


def test_copies_of_one_id_with_different_acls_withdraw_the_old_version(config: ChunkerConfig) -> None:
    from pipelines.knowledge.reindex import declared_acls

    previous = _indexed([_doc("a"), _doc("b")], config)  # b is live and public
    copies = [replace(_doc("b"), acl=("hr",), source="drop.jsonl"), replace(_doc("b"), source="reports.jsonl")]
    for ordered in (copies, copies[::-1]):  # whichever copy sorts last
        declared = declared_acls(ordered, valid={"a"})
        assert declared == {"b": None}
        plan = plan_update([_doc("a")], previous, config, quarantined=declared)
        assert plan.withdrawn_docs == ["b"] and not plan.kept_docs
    assert declared_acls([replace(_doc("b"), acl=("hr",))] * 2, valid=set()) == {"b": ["hr"]}


def _alive(kind: type, prefix: str) -> int:
    """How many objects of `kind` belonging to documents whose id starts with `prefix` are in memory."""
    gc.collect()
    key = "doc_id" if kind is Chunk else "id"
    return sum(1 for o in gc.get_objects() if type(o) is kind and getattr(o, key).startswith(prefix))


def test_a_plan_keeps_the_chunks_it_writes_on_disk_not_in_memory(config: ChunkerConfig) -> None:
    """A full rebuild writes the whole corpus: holding its chunks would cost the corpus's text again (issue 12)."""
    docs = [_doc(f"spooled{i}") for i in range(12)]
    plan = plan_update(docs, IndexManifest("C_1", "model", config.signature()), config)
    assert len(plan.to_write) == plan.manifest.chunk_count > len(docs)
    assert _alive(Chunk, "spooled") == 0, "the plan holds chunks in memory"
    # Read back page by page: exactly what chunking made, in order, with nothing lost at page edges.
    pages = list(plan.to_write.pages(7))
    assert [len(p) for p in pages[:-1]] == [7] * (len(pages) - 1) and 1 <= len(pages[-1]) <= 7
    assert [c for p in pages for c in p] == [c for d in docs for c in chunk_document(d, config)]


def test_a_plan_reads_its_documents_once_so_they_can_stream_from_disk(config: ChunkerConfig) -> None:
    docs = [_doc("a"), _doc("b")]
    previous = _indexed(docs, config)
    plan = plan_update(iter(docs), previous, config)  # a one-pass stream: a second read would see nothing
    assert plan.unchanged_docs == ["a", "b"] and not plan.deleted_docs and not plan.to_delete


def test_staged_documents_are_read_one_at_a_time(tmp_path: Path) -> None:
    docs = [replace(_doc(f"staged{i}"), acl=("hr",)) for i in range(10)]
    stage_documents(tmp_path / "documents.jsonl", docs)
    staged = StagedDocuments(tmp_path / "documents.jsonl")
    assert _alive(Document, "staged") == len(docs)  # this test's own list
    del docs
    most = 0
    for _ in staged:
        most = max(most, _alive(Document, "staged"))
    assert most == 1, f"{most} staged documents were in memory at once"
    assert [d.acl for d in staged] == [("hr",)] * 10, "each pass reads the file again, ACLs as tuples"
