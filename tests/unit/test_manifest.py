"""Planning an update from the manifest: what to write, move and delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.knowledge.chunking import ChunkerConfig
from pipelines.knowledge.documents import Document
from pipelines.knowledge.manifest import IndexManifest, plan_update
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
    plan = plan_update([_doc("a")], previous, config, quarantined=["b"])
    assert plan.kept_docs == ["b"] and not plan.to_delete
    assert plan.manifest.documents["b"] == previous.documents["b"]


def test_manifest_round_trips_and_detects_incompatible_settings(tmp_path: Path, config: ChunkerConfig) -> None:
    manifest = _indexed([_doc("a")], config)
    manifest.save(tmp_path)
    loaded = IndexManifest.load(tmp_path, "C_1")
    assert loaded == manifest
    assert loaded.compatible_with("model", config)
    assert not loaded.compatible_with("other-model", config)
    assert not loaded.compatible_with("model", ChunkerConfig(config.tokenizer, chunk_tokens=120))
