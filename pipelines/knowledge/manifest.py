"""The index manifest: what each collection holds, and the plan to bring it up to date.

Per collection it records, for every document, its content hash and its chunks'
ids, hashes and positions, plus the embedding model and chunker settings that
produced them. Comparing it with today's documents gives the plan: which chunks
to write, which only moved, which to delete; unchanged documents cost nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.knowledge.chunking import Chunk, ChunkerConfig, chunk_document
from pipelines.knowledge.documents import Document


@dataclass(frozen=True)
class ChunkEntry:
    uuid: str
    content_hash: str
    position: int


@dataclass(frozen=True)
class DocumentEntry:
    content_hash: str
    chunks: tuple[ChunkEntry, ...]


@dataclass
class IndexManifest:
    """What one Weaviate collection holds."""

    collection: str
    embedding_model: str
    chunker: dict[str, Any]
    documents: dict[str, DocumentEntry] = field(default_factory=dict)
    data_version: dict[str, str] = field(default_factory=dict)

    def compatible_with(self, embedding_model: str, chunker: ChunkerConfig) -> bool:
        """Vectors and boundaries can be reused only under the same model and chunker."""
        return self.embedding_model == embedding_model and self.chunker == chunker.signature()

    @property
    def chunk_count(self) -> int:
        return sum(len(entry.chunks) for entry in self.documents.values())

    @staticmethod
    def path_for(directory: Path, collection: str) -> Path:
        return directory / f"{collection}.json"

    @classmethod
    def load(cls, directory: Path, collection: str) -> IndexManifest | None:
        path = cls.path_for(directory, collection)
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        documents = {
            doc_id: DocumentEntry(entry["content_hash"], tuple(ChunkEntry(**c) for c in entry["chunks"]))
            for doc_id, entry in raw["documents"].items()
        }
        return cls(raw["collection"], raw["embedding_model"], raw["chunker"], documents, raw.get("data_version", {}))

    def save(self, directory: Path) -> Path:
        """Write atomically: a crash mid-write never leaves a half manifest."""
        directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(directory, self.collection)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), ensure_ascii=False))
        os.replace(tmp, path)
        return path


@dataclass
class IndexPlan:
    """Everything an update must do, decided before anything is written."""

    to_write: list[Chunk]  # new content: needs a vector (cache or encoder)
    to_move: dict[str, int]  # unchanged content at a new position: property update only
    to_delete: list[str]  # object ids that no longer belong to any document
    new_docs: list[str]
    changed_docs: list[str]
    unchanged_docs: list[str]
    deleted_docs: list[str]
    kept_docs: list[str]  # quarantined today but indexed before: keep the old version
    manifest: IndexManifest  # what the collection holds once the plan is applied

    def counts(self) -> dict[str, int]:
        return {
            "docs_new": len(self.new_docs),
            "docs_changed": len(self.changed_docs),
            "docs_unchanged": len(self.unchanged_docs),
            "docs_deleted": len(self.deleted_docs),
            "docs_kept_quarantined": len(self.kept_docs),
            "chunks_to_write": len(self.to_write),
            "chunks_moved": len(self.to_move),
            "chunks_to_delete": len(self.to_delete),
        }


def plan_update(
    documents: Sequence[Document],
    previous: IndexManifest,
    chunker: ChunkerConfig,
    quarantined: Sequence[str] = (),
) -> IndexPlan:
    """Compare today's valid documents with what the collection holds."""
    manifest = IndexManifest(previous.collection, previous.embedding_model, chunker.signature())
    to_write: list[Chunk] = []
    to_move: dict[str, int] = {}
    kept_ids: set[str] = set()
    new: list[str] = []
    changed: list[str] = []
    unchanged: list[str] = []
    for document in documents:
        old = previous.documents.get(document.id)
        if old is not None and old.content_hash == document.content_hash:
            unchanged.append(document.id)
            manifest.documents[document.id] = old
            kept_ids.update(c.uuid for c in old.chunks)
            continue
        (changed if old is not None else new).append(document.id)
        old_positions = {c.uuid: c.position for c in old.chunks} if old else {}
        chunks = chunk_document(document, chunker)
        for chunk in chunks:
            if chunk.uuid not in old_positions:
                to_write.append(chunk)
            elif old_positions[chunk.uuid] != chunk.position:
                to_move[chunk.uuid] = chunk.position
        kept_ids.update(c.uuid for c in chunks)
        manifest.documents[document.id] = DocumentEntry(
            document.content_hash, tuple(ChunkEntry(c.uuid, c.content_hash, c.position) for c in chunks)
        )
    present = {d.id for d in documents}
    kept = [doc_id for doc_id in quarantined if doc_id in previous.documents and doc_id not in present]
    for doc_id in kept:
        manifest.documents[doc_id] = previous.documents[doc_id]
        kept_ids.update(c.uuid for c in previous.documents[doc_id].chunks)
    deleted = [doc_id for doc_id in previous.documents if doc_id not in present and doc_id not in kept]
    to_delete = [c.uuid for entry in previous.documents.values() for c in entry.chunks if c.uuid not in kept_ids]
    return IndexPlan(to_write, to_move, to_delete, new, changed, unchanged, deleted, kept, manifest)
