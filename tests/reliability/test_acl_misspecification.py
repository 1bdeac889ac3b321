"""Every ACL mis-specification is quarantined or gets the right groups, and is never served without the group.

Real Weaviate, MLflow, DVC and GX: documents go through `run_reindex`, readers through
`pipelines.knowledge.retrieval.search` (the ACL is a filter inside Weaviate).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests_support import sample_reports, write_reports

from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.reindex import run_reindex
from pipelines.knowledge.retrieval import open_retriever, search
from pipelines.settings import Settings

N_REPORTS = 8
# Each document says one made-up thing no report says, so a query for it finds it if it is visible.
DOCS = {
    "typo.md": ("---\nACL: [hr]\n---\n# Salary bands\n\n", "The zorblat salary bands for every engineer are secret."),
    "string.md": (
        '---\nacl: "hr, finance"\n---\n# Budget\n\n',
        "The quintaro budget reserve is shared by hr and finance.",
    ),
    "empty.md": ("---\nacl: []\n---\n# Nobody\n\n", "The vexmoor layoffs plan is readable by nobody at all."),
    "unknown.md": (
        "---\nacl: [hrr]\n---\n# Typo group\n\n",
        "The plindor bonus pool goes to a group that does not exist.",
    ),
    "no-sidecar.txt": ("", "The drumlet supplier contract carries no ACL anywhere."),
    "with-sidecar.txt": ("", "The cassivel lawsuit settlement is for legal only."),
}
QUERIES = {
    "typo.md": "zorblat salary bands",
    "string.md": "quintaro budget reserve",
    "empty.md": "vexmoor layoffs plan",
    "unknown.md": "plindor bonus pool",
    "no-sidecar.txt": "drumlet supplier contract",
    "with-sidecar.txt": "cassivel lawsuit settlement",
}
CALLERS = [(), ("hr",), ("finance",), ("legal",), ("hrr",), ("hr", "finance", "legal")]


@pytest.fixture
def acl_kb(kb: Settings) -> Settings:
    """A knowledge base with known groups and the production rule for ACL-less documents."""
    return kb.model_copy(
        update={"known_groups": "hr,finance,legal", "documents_without_acl": "quarantine", "max_invalid_share": 0.5}
    )


def _write_corpus(documents: Path) -> None:
    # The public reports say so explicitly, through a sidecar of their JSONL file.
    write_reports(documents, sample_reports(N_REPORTS))
    (documents / "reports.jsonl.meta.yaml").write_text("acl: public\n")
    for name, (head, body) in DOCS.items():
        (documents / name).write_text(head + (body + " ") * 3)
    (documents / "with-sidecar.txt.meta.yaml").write_text("acl: [legal]\ntitle: Settlement\n")


def test_acl_misspecifications_are_quarantined_or_get_their_groups(acl_kb: Settings, embedder: Embedder) -> None:
    documents = acl_kb.data_dir / "documents"
    _write_corpus(documents)
    report = run_reindex(acl_kb, embedder=embedder)
    assert report.accepted, report.summary()

    quarantine = json.loads((acl_kb.quarantine_dir / f"{report.run_id}.json").read_text())["quarantine"]
    reasons = {q["document"]: q["reason"] for q in quarantine}
    print("quarantine:", json.dumps(reasons, indent=1))
    assert "ACL key spelled 'ACL'" in reasons["typo.md"]
    assert "ACL is empty" in reasons["empty.md"]
    assert "unknown ACL group 'hrr'" in reasons["unknown.md"]
    assert "DOCUMENTS_WITHOUT_ACL=quarantine" in reasons["no-sidecar.txt"]
    assert set(reasons) == {"typo.md", "empty.md", "unknown.md", "no-sidecar.txt"}
    # What each quarantined document would have had, for the planner (stricter ACLs still apply).
    acls = {q["document"]: q["acl"] for q in quarantine}
    assert acls["typo.md"] == ["hr"] and acls["empty.md"] == [] and acls["unknown.md"] == ["hrr"]

    readable = {  # document -> groups that may read it; everything else must never be served
        "string.md": {"hr", "finance"},
        "with-sidecar.txt": {"legal"},
    }
    served: dict[tuple[str, tuple[str, ...]], bool] = {}
    with open_retriever(acl_kb) as retriever:
        for doc_id, query in QUERIES.items():
            for caller in CALLERS:
                hits = retriever.search(query, k=10, user_groups=caller)
                served[(doc_id, caller)] = any(h.doc_id == doc_id for h in hits)
                for hit in hits:
                    assert hit.acl == ("public",) or set(hit.acl) & set(caller), (caller, hit.doc_id, hit.acl)
    for (doc_id, caller), seen in served.items():
        allowed = bool(readable.get(doc_id, set()) & set(caller))
        assert seen == allowed, f"{doc_id} served={seen} to {caller or 'no groups'} (allowed={allowed})"

    # The public API, once per kind of caller: the comma-separated ACL became two real groups.
    assert any(h.doc_id == "string.md" for h in search(acl_kb, QUERIES["string.md"], k=10, user_groups=["finance"]))
    assert not any(h.doc_id == "string.md" for h in search(acl_kb, QUERIES["string.md"], k=10))
    assert {
        h.acl
        for h in search(acl_kb, QUERIES["with-sidecar.txt"], k=10, user_groups=["legal"])
        if h.doc_id == "with-sidecar.txt"
    } == {("legal",)}
