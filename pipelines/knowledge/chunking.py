"""Token-aware chunking that keeps title, section and position.

Boundaries are anchored at paragraphs: a paragraph is one chunk, a short one is
merged with the next, and only a paragraph longer than `chunk_tokens` is split
(with overlap, by LangChain's recursive splitter measured in embedding-model
tokens). The trade-off is deliberate: greedy packing across paragraphs shifts
every later boundary when one paragraph grows, so a one-word edit would re-embed
the rest of the document. Anchored boundaries keep an edit's effect local, which
lets unchanged chunks keep their ids and vectors.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pipelines.knowledge.documents import Document

CHUNKER_NAME = "paragraph-anchored-v1"
_NAMESPACE = uuid.UUID("6f1c9a52-3d1e-4c55-9a53-4f1f0d6b7a10")


@dataclass(frozen=True)
class ChunkerConfig:
    """What decides chunk boundaries; part of the manifest, so a change forces a rebuild."""

    tokenizer: str
    chunk_tokens: int = 200
    overlap_tokens: int = 30
    min_tokens: int = 40

    def signature(self) -> dict[str, Any]:
        return {
            "name": CHUNKER_NAME,
            "tokenizer": self.tokenizer,
            "chunk_tokens": self.chunk_tokens,
            "overlap_tokens": self.overlap_tokens,
            "min_tokens": self.min_tokens,
        }


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document, with a deterministic Weaviate UUID."""

    uuid: str
    doc_id: str
    position: int
    title: str
    section: str
    text: str
    content_hash: str
    acl: tuple[str, ...]
    source_url: str

    @property
    def embedding_text(self) -> str:
        """What the encoder sees: the chunk in the context of its document and section."""
        return " — ".join(part for part in (self.title, self.section, self.text) if part)


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


@lru_cache(maxsize=4)
def _splitter(config: ChunkerConfig) -> Any:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(
        chunk_size=config.chunk_tokens,
        chunk_overlap=config.overlap_tokens,
        length_function=lambda text: _count_tokens(config, text),
    )


@lru_cache(maxsize=4)
def _counter(name_or_path: str) -> Any:
    # The Rust tokenizer directly: transformers' wrapper costs 3x more per call,
    # and the recursive splitter measures thousands of pieces. A copy, because the
    # model's own one truncates and pads to 128 tokens.
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(load_tokenizer(name_or_path).backend_tokenizer.to_str())
    counter.no_truncation()
    counter.no_padding()
    return counter


def _count_tokens(config: ChunkerConfig, text: str) -> int:
    return len(_counter(config.tokenizer).encode(text, add_special_tokens=False).ids)


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def split_paragraphs(text: str) -> list[tuple[str, str]]:
    """(section, paragraph) pairs; markdown headings set the section of what follows."""
    section = ""
    pieces: list[tuple[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block:
            continue
        heading = _HEADING.match(block.splitlines()[0])
        if heading:
            section = heading.group(2).strip()
            block = "\n".join(block.splitlines()[1:]).strip()
            if not block:
                continue
        pieces.append((section, block))
    return pieces


def chunk_texts(text: str, config: ChunkerConfig) -> list[tuple[str, str]]:
    """(section, chunk text) in document order."""
    out: list[tuple[str, str]] = []
    pending_section, pending = "", ""
    for section, paragraph in split_paragraphs(text):
        if pending and section != pending_section:
            out.append((pending_section, pending))
            pending = ""
        candidate = f"{pending}\n\n{paragraph}" if pending else paragraph
        tokens = _count_tokens(config, candidate)
        if tokens < config.min_tokens:
            pending_section, pending = section, candidate
            continue
        pending = ""
        if tokens <= config.chunk_tokens:
            out.append((section, candidate))
        else:
            out.extend((section, piece) for piece in _splitter(config).split_text(candidate))
    if pending:
        out.append((pending_section, pending))
    return out


def chunk_document(document: Document, config: ChunkerConfig) -> list[Chunk]:
    """Chunks of one document. Same text at the same document gives the same UUID."""
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for position, (section, text) in enumerate(chunk_texts(document.text, config)):
        content_hash = hashlib.sha256(f"{document.title}\x00{section}\x00{text}".encode()).hexdigest()
        occurrence = seen.get(content_hash, 0)
        seen[content_hash] = occurrence + 1
        # Access and attribution are part of the object's identity (an ACL change must
        # rewrite it) but not of its vector, which is cached by content_hash alone.
        identity = (
            f"{document.id}\x00{content_hash}\x00{occurrence}\x00{','.join(document.acl)}\x00{document.source_url}"
        )
        object_id = uuid.uuid5(_NAMESPACE, identity)
        chunks.append(
            Chunk(
                str(object_id),
                document.id,
                position,
                document.title,
                section,
                text,
                content_hash,
                document.acl,
                document.source_url,
            )
        )
    return chunks
