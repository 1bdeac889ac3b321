"""Chunk boundaries, identities and metadata."""

from __future__ import annotations

import pytest

from pipelines.knowledge.chunking import ChunkerConfig, _count_tokens, chunk_document, split_paragraphs
from pipelines.knowledge.documents import Document
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def config() -> ChunkerConfig:
    return ChunkerConfig(Settings().embedding_model_path, chunk_tokens=60, overlap_tokens=10, min_tokens=8)


def _paragraph(n: int, words: int = 16) -> str:
    return " ".join(f"topic{n} word{i}" for i in range(words // 2)) + "."


def _doc(paragraphs: list[str], title: str = "Report") -> Document:
    return Document("doc.md", title, "\n\n".join(paragraphs), "md")


def test_markdown_headings_become_sections() -> None:
    pieces = split_paragraphs("# Intro\n\nfirst para\n\n## Costs\n\nsecond para")
    assert pieces == [("Intro", "first para"), ("Costs", "second para")]


def test_chunks_keep_title_section_and_position(config: ChunkerConfig) -> None:
    chunks = chunk_document(Document("a.md", "Annual review", "# Intro\n\n" + _paragraph(1, words=10), "md"), config)
    assert [(c.title, c.section, c.position) for c in chunks] == [("Annual review", "Intro", 0)]
    assert chunks[0].embedding_text.startswith("Annual review — Intro — ")


def test_long_paragraph_is_split_within_token_budget_with_overlap(config: ChunkerConfig) -> None:
    long = " ".join(f"Sentence number {i} says something about costs." for i in range(40))
    chunks = chunk_document(_doc([long]), config)
    assert len(chunks) > 3
    assert all(_count_tokens(config, c.text) <= config.chunk_tokens for c in chunks)
    first_words = set(chunks[1].text.split()[:5])
    assert first_words & set(chunks[0].text.split()[-15:]), "consecutive pieces should overlap"


def test_same_content_gives_same_ids(config: ChunkerConfig) -> None:
    doc = _doc([_paragraph(i) for i in range(5)])
    assert [c.uuid for c in chunk_document(doc, config)] == [c.uuid for c in chunk_document(doc, config)]


def test_editing_one_paragraph_changes_only_its_chunk(config: ChunkerConfig) -> None:
    paragraphs = [_paragraph(i) for i in range(12)]
    before = chunk_document(_doc(paragraphs), config)
    paragraphs[5] = paragraphs[5].replace("word3", "EDITED word3 and a few more words to change length")
    after = chunk_document(_doc(paragraphs), config)
    changed = {c.uuid for c in after} - {c.uuid for c in before}
    assert len(changed) == 1


def test_acl_change_changes_identity_but_not_content_hash(config: ChunkerConfig) -> None:
    public = chunk_document(Document("d.md", "T", _paragraph(1), "md"), config)[0]
    private = chunk_document(Document("d.md", "T", _paragraph(1), "md", acl=("finance",)), config)[0]
    assert public.uuid != private.uuid
    assert public.content_hash == private.content_hash
