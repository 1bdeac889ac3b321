"""The index manifest: what each collection holds, and the plan to bring it up to date.

Per collection it records, for every document, its content hash and its chunks'
ids, hashes and positions, plus the embedding model and chunker settings that
produced them. Comparing it with today's documents gives the plan: which chunks
to write, which only moved, which to delete; unchanged documents cost nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.knowledge.chunking import Chunk, ChunkerConfig, chunk_document
from pipelines.knowledge.documents import PUBLIC, Document


@dataclass(frozen=True)
class ChunkEntry:
    uuid: str
    content_hash: str
    position: int


@dataclass(frozen=True)
class DocumentEntry:
    content_hash: str
    chunks: tuple[ChunkEntry, ...]
    source: str = ""  # the file the document came from
    acl: tuple[str, ...] | None = None  # None: written before ACLs were recorded (treated as unknown)


class ManifestCorrupt(RuntimeError):
    """A manifest file exists but cannot be read: the collection's contents are unknown."""


@dataclass
class IndexManifest:
    """What one Weaviate collection holds."""

    collection: str
    embedding_model: str
    chunker: dict[str, Any]
    documents: dict[str, DocumentEntry] = field(default_factory=dict)
    data_version: dict[str, str] = field(default_factory=dict)
    # The generation readers see once this manifest is committed (see pipelines.knowledge.index).
    generation: int = 0
    # Position updates committed but maybe not yet applied (a crash between commit and apply).
    pending_moves: dict[str, int] = field(default_factory=dict)

    def compatible_with(self, embedding_model: str, chunker: ChunkerConfig) -> bool:
        """Vectors and boundaries can be reused only under the same model and chunker."""
        return self.embedding_model == embedding_model and self.chunker == chunker.signature()

    @property
    def chunk_count(self) -> int:
        return sum(len(entry.chunks) for entry in self.documents.values())

    @staticmethod
    def path_for(directory: Path, collection: str) -> Path:
        return directory / f"{collection}.json"

    @property
    def chunk_ids(self) -> set[str]:
        return {c.uuid for entry in self.documents.values() for c in entry.chunks}

    @classmethod
    def load(cls, directory: Path, collection: str) -> IndexManifest | None:
        """The manifest of `collection`, None if it has none; raises `ManifestCorrupt` if it cannot be read."""
        return cls.read(cls.path_for(directory, collection))

    @classmethod
    def read(cls, path: Path) -> IndexManifest | None:
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            documents = {
                doc_id: DocumentEntry(
                    entry["content_hash"],
                    tuple(ChunkEntry(**c) for c in entry["chunks"]),
                    str(entry.get("source", "")),
                    tuple(entry["acl"]) if entry.get("acl") is not None else None,
                )
                for doc_id, entry in raw["documents"].items()
            }
            return cls(
                raw["collection"],
                raw["embedding_model"],
                raw["chunker"],
                documents,
                raw.get("data_version", {}),
                int(raw.get("generation", 0)),
                {k: int(v) for k, v in raw.get("pending_moves", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ManifestCorrupt(f"{path}: {type(err).__name__}: {err}") from err

    def save(self, directory: Path) -> Path:
        """Write atomically: a crash mid-write never leaves a half manifest."""
        return self.write(self.path_for(directory, self.collection))

    def write(self, path: Path, durable: bool = True) -> Path:
        """Write atomically (temp file + rename); `durable` also waits until it is on disk."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w") as out:
            out.write(json.dumps(asdict(self), ensure_ascii=False))
            if durable:  # the live manifest is the commit point: it must be on disk before we act on it
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
        if durable:  # the rename itself must survive a power loss too
            handle = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        return path


class ChunkSpool:
    """The chunks a plan writes, kept in an anonymous temporary file rather than in memory.

    A full rebuild writes the whole corpus: held as `Chunk`s it costs about a kilobyte of text per chunk
    on top of the documents (issue 12). Spooled, a run holds one page at a time. The file has no name,
    so a crash leaves nothing behind; it is closed when the spool is.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._count = 0
        self._close = weakref.finalize(self, self._file.close)

    def append(self, chunk: Chunk) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(json.dumps(asdict(chunk), ensure_ascii=False).encode() + b"\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def pages(self, size: int) -> Iterator[list[Chunk]]:
        """The chunks in order, `size` at a time (each page is read when it is asked for)."""
        self._file.flush()
        offset = 0
        while True:
            self._file.seek(offset)  # another page or an append may have moved the shared position
            page = []
            for _ in range(size):
                line = self._file.readline()
                if not line:
                    break
                offset += len(line)
                row = json.loads(line)
                page.append(Chunk(**{**row, "acl": tuple(row["acl"])}))
            if page:
                yield page
            if len(page) < size:
                return

    def close(self) -> None:
        self._close()


@dataclass
class IndexPlan:
    """Everything an update must do, decided before anything is written."""

    to_write: ChunkSpool  # new content: needs a vector (cache or encoder); spooled to disk
    to_move: dict[str, int]  # unchanged content at a new position: property update only
    to_delete: list[str]  # object ids that no longer belong to any document
    new_docs: list[str]
    changed_docs: list[str]
    unchanged_docs: list[str]
    deleted_docs: list[str]
    kept_docs: list[str]  # quarantined or unreadable today but indexed before: keep the old version
    manifest: IndexManifest  # what the collection holds once the plan is applied
    withdrawn_docs: list[str] = field(default_factory=list)  # quarantined, and the old ACL may be too loose

    def counts(self) -> dict[str, int]:
        return {
            "docs_new": len(self.new_docs),
            "docs_changed": len(self.changed_docs),
            "docs_unchanged": len(self.unchanged_docs),
            "docs_deleted": len(self.deleted_docs),
            "docs_kept_quarantined": len(self.kept_docs),
            "docs_withdrawn_acl": len(self.withdrawn_docs),
            "chunks_to_write": len(self.to_write),
            "chunks_moved": len(self.to_move),
            "chunks_to_delete": len(self.to_delete),
        }


def readers(acl: Sequence[str]) -> set[str] | None:
    """Who may read under `acl`: a set of groups, or None for everyone."""
    return None if PUBLIC in acl else set(acl)


def no_looser(old: Sequence[str] | None, new: Sequence[str] | None) -> bool:
    """True when everyone who may read under `old` may also read under `new` (unknown is never safe)."""
    if old is None or new is None:
        return False
    old_readers, new_readers = readers(old), readers(new)
    if new_readers is None:
        return True
    return old_readers is not None and old_readers <= new_readers


def plan_update(
    documents: Iterable[Document],
    previous: IndexManifest,
    chunker: ChunkerConfig,
    quarantined: Mapping[str, Sequence[str] | None] | Sequence[str] = (),
    unreadable_sources: Collection[str] = (),
) -> IndexPlan:
    """Compare today's valid documents with what the collection holds.

    `quarantined` maps each document that failed validation today to the ACL its new version
    declares (None when that is unknown). Its previous version stays indexed only if that ACL
    lets no one read it who the new ACL would not: tightening an ACL takes effect even when the
    new version is quarantined. Documents of a source file that could not be read today are
    kept as they were: an unreadable file is not a deleted one.
    """
    declared = dict(quarantined) if isinstance(quarantined, Mapping) else dict.fromkeys(quarantined, None)
    manifest = IndexManifest(previous.collection, previous.embedding_model, chunker.signature())
    to_write = ChunkSpool()
    present: set[str] = set()
    to_move: dict[str, int] = {}
    kept_ids: set[str] = set()
    new: list[str] = []
    changed: list[str] = []
    unchanged: list[str] = []
    for document in documents:  # read once, one at a time: documents may stream from disk
        present.add(document.id)
        old = previous.documents.get(document.id)
        if old is not None and old.content_hash == document.content_hash:
            unchanged.append(document.id)
            manifest.documents[document.id] = replace(old, source=document.source, acl=tuple(document.acl))
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
            document.content_hash,
            tuple(ChunkEntry(c.uuid, c.content_hash, c.position) for c in chunks),
            document.source,
            tuple(document.acl),
        )
    kept: list[str] = []
    withdrawn: list[str] = []
    for doc_id, entry in previous.documents.items():
        if doc_id in present:
            continue
        if doc_id in declared:
            (kept if no_looser(entry.acl, declared[doc_id]) else withdrawn).append(doc_id)
        elif entry.source and _unreadable(entry.source, unreadable_sources):
            kept.append(doc_id)
    for doc_id in kept:
        manifest.documents[doc_id] = previous.documents[doc_id]
        kept_ids.update(c.uuid for c in previous.documents[doc_id].chunks)
    deleted = [doc_id for doc_id in previous.documents if doc_id not in present and doc_id not in kept]
    to_delete = [c.uuid for entry in previous.documents.values() for c in entry.chunks if c.uuid not in kept_ids]
    return IndexPlan(to_write, to_move, to_delete, new, changed, unchanged, deleted, kept, manifest, withdrawn)


def _unreadable(source: str, unreadable_sources: Collection[str]) -> bool:
    """The file could not be read this run, itself or its folder (a folder source ends with `/`; `/` is all)."""
    return source in unreadable_sources or any(
        s == "/" or (s.endswith("/") and source.startswith(s)) for s in unreadable_sources
    )


def change_share(plan: IndexPlan, live_documents: int) -> float:
    """Share of the live documents this plan deletes or rewrites (new documents are not a risk to readers)."""
    if live_documents == 0:
        return 0.0
    return (len(plan.changed_docs) + len(plan.deleted_docs)) / live_documents
