"""The GX validation gate on documents (real Great Expectations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.knowledge.documents import Document, LoadProblem
from pipelines.knowledge.validation import ValidationFailed, ValidationLimits, enforce, validate_documents
from pipelines.settings import Settings

LIMITS = ValidationLimits(
    min_text_chars=10, max_text_chars=10_000, max_invalid_share=0.5, pii_patterns=tuple(Settings().pii_patterns)
)


def _good(i: int) -> Document:
    return Document(f"doc{i}.md", f"Doc {i}", f"A perfectly ordinary paragraph number {i}.", "md")


def test_bad_documents_are_quarantined_with_reasons(tmp_path: Path) -> None:
    docs = [_good(i) for i in range(12)] + [
        Document("empty.md", "Empty", "", "md"),
        Document("doc1.md", "Dup", "Another text with the same id as doc1.", "md"),
        Document("key.txt", "Key", "config: api_key = sk_live_0123456789abcdef", "txt"),
        Document("ssn.txt", "SSN", "Employee SSN 123-45-6789 on file.", "txt"),
        Document("bin.exe", "Binary", "whatever text is long enough", "exe"),
        Document("latin.txt", "Latin", "caf\ufffd au lait and more words", "txt", encoding_valid=False),
    ]
    report = validate_documents(docs, [LoadProblem("x.pdf", "broken")], LIMITS, tmp_path / "gx")
    reasons = {(q.document, q.reason) for q in report.quarantine}
    assert ("empty.md", "text empty, too short or too long") in reasons
    assert ("doc1.md", "duplicate id") in reasons
    assert ("key.txt", "contains PII or a secret") in reasons
    assert ("ssn.txt", "contains PII or a secret") in reasons
    assert ("bin.exe", "unexpected file type") in reasons
    assert ("latin.txt", "text is not valid UTF-8") in reasons
    assert ("x.pdf", "broken") in reasons
    assert set(report.valid_ids) == {f"doc{i}.md" for i in range(12) if i != 1}
    assert report.hard_failure is None
    assert (Path(report.data_docs_dir) / "index.html").exists()
    report.write(tmp_path / "q.json")
    enforce(report, tmp_path / "q.json")  # within limits: no exception


def test_too_many_invalid_documents_is_a_hard_failure(tmp_path: Path) -> None:
    docs = [_good(1)] + [Document(f"e{i}.md", "E", "", "md") for i in range(3)]
    report = validate_documents(docs, [], LIMITS, tmp_path / "gx")
    assert report.hard_failure and "75%" in report.hard_failure
    with pytest.raises(ValidationFailed, match="3 of 4 documents failed validation"):
        enforce(report, tmp_path / "q.json")


def test_empty_batch_is_a_hard_failure(tmp_path: Path) -> None:
    report = validate_documents([], [], LIMITS)
    assert report.hard_failure == "no valid documents in the batch"
