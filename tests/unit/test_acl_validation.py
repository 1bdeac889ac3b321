"""ACLs in the GX suite, and validation output that never carries document text (real GX)."""

from __future__ import annotations

from pathlib import Path

from pipelines.knowledge.documents import Document, LoadProblem
from pipelines.knowledge.validation import ValidationLimits, validate_documents
from pipelines.settings import Settings

LIMITS = ValidationLimits(
    min_text_chars=10, max_text_chars=10_000, max_invalid_share=0.9, pii_patterns=tuple(Settings().pii_patterns)
)
SECRET = "api_key = sk_live_Zq9V7mXc4T2pLr8N"
RESTRICTED = "The merger with Northwind closes on the ninth of March at 41 dollars a share."


def _good(i: int) -> Document:
    return Document(f"doc{i}.md", f"Doc {i}", f"A perfectly ordinary paragraph number {i}.", "md")


def test_acl_problems_are_quarantined_by_the_suite_with_their_reason(tmp_path: Path) -> None:
    docs = [_good(i) for i in range(4)] + [
        Document("typo.md", "T", "Text long enough to pass.", "md", ("hr",), acl_problem="ACL key spelled 'ACL'"),
        Document("upper.md", "U", "Text long enough to pass.", "md", ("HR",)),  # built without the loader
        Document("none.md", "N", "Text long enough to pass.", "md", ()),
        Document("hr.md", "H", "Text long enough to pass.", "md", ("finance", "hr")),
    ]
    report = validate_documents(docs, [LoadProblem("x.pdf", "broken")], LIMITS, tmp_path / "gx")
    reasons = {q.document: q.reason for q in report.quarantine}
    assert reasons["typo.md"] == "ACL: ACL key spelled 'ACL'"
    assert reasons["upper.md"] == reasons["none.md"] == "ACL group name does not match ACL_GROUP_PATTERN"
    assert "hr.md" in report.valid_ids and "hr.md" not in reasons
    assert report.quarantined_acls == {"typo.md": ("hr",), "upper.md": ("HR",), "none.md": (), "x.pdf": None}


def test_reports_and_data_docs_hold_no_document_text(tmp_path: Path) -> None:
    docs = [_good(i) for i in range(4)] + [
        Document("secret.md", "Deploy notes", f"Use {SECRET} for the deploy.", "md"),
        Document("merger.md", "Project Northwind board paper", RESTRICTED, "md", ("board",)),
        Document("short.md", "Tiny", "Too short", "md", ("board",)),
    ]
    report = validate_documents(docs, [], LIMITS, tmp_path / "gx")
    assert {q.document for q in report.quarantine} == {"secret.md", "short.md"}
    report.write(tmp_path / "report.json")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "index.html" for p in written)
    for path in written:
        content = path.read_text(errors="replace")
        for fragment in ("sk_live_Zq9V7mXc4T2pLr8N", "Northwind", "Too short", "Deploy notes"):
            assert fragment not in content, f"{fragment!r} leaked into {path.relative_to(tmp_path)}"
