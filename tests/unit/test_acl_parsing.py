"""ACLs are data: one reading for every format, and every mis-specification is a problem, never public."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.knowledge.documents import Acl, AclPolicy, LoadOptions, load_documents, parse_acl

POLICY = AclPolicy()


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        (["hr", "finance"], ("finance", "hr")),
        ("hr, finance", ("finance", "hr")),
        ("hr,finance", ("finance", "hr")),
        (" hr ", ("hr",)),
        (["public"], ("public",)),
        ("hr\nfinance", ("finance", "hr")),
    ],
)
def test_lists_and_comma_separated_strings_read_the_same(value: object, groups: tuple[str, ...]) -> None:
    assert parse_acl(value, POLICY) == Acl(groups)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "ACL is empty"),
        ("", "ACL is empty"),
        (None, "not null"),
        ("hr,,finance", "empty group name"),
        ("hr,", "empty group name"),
        (["HR"], "does not match ACL_GROUP_PATTERN"),
        ({"hr": 1}, "not dict"),
        ([1], "must be strings"),
        (["a b"], "does not match ACL_GROUP_PATTERN"),
    ],
)
def test_mis_specified_acls_are_problems(value: object, problem: str) -> None:
    assert problem in parse_acl(value, POLICY).problem


def test_unknown_group_is_a_problem_only_when_known_groups_are_set() -> None:
    strict = AclPolicy(known_groups=frozenset({"hr", "finance"}))
    assert parse_acl(["hr", "hrr"], POLICY) == Acl(("hr", "hrr"))
    found = parse_acl(["hr", "hrr"], strict)
    assert found.groups == ("hr", "hrr") and "unknown ACL group 'hrr'" in found.problem
    assert parse_acl(["public"], strict).problem == ""


def _corpus(root: Path) -> None:
    (root / "typo.md").write_text("---\nACL: [hr]\n---\n# Typo\n\nSalaries of the whole hr team, in detail.")
    (root / "string.md").write_text('---\nacl: "hr, finance"\n---\n# String\n\nBudget shared by hr and finance.')
    (root / "empty.md").write_text("---\nacl: []\n---\n# Empty\n\nA document readable by nobody at all.")
    (root / "page.html").write_text('<html><head><meta name="Acl" content="legal"></head><body>x</body></html>')
    (root / "rows.jsonl").write_text(
        json.dumps({"_id": "r1", "text": "row", "Acl": ["hr"]})
        + "\n"
        + json.dumps({"_id": "r2", "text": "row", "acl": "hr, legal"})
        + "\n"
    )
    (root / "plain.txt").write_text("Plain notes about the quarter.")
    (root / "memo.txt").write_text("A memo with a sidecar.")
    (root / "memo.txt.meta.yaml").write_text("acl: finance, legal\ntitle: Board memo\n")
    (root / "hr").mkdir()
    (root / "hr" / ".acl").write_text("# HR only\nhr\npeople-ops\n")
    (root / "hr" / "deep").mkdir()
    (root / "hr" / "deep" / "review.txt").write_text("Performance review notes.")
    (root / "hr" / "own.md").write_text("---\nacl: [hr-leads]\n---\nOwn ACL wins over the folder's.")


def test_every_format_reads_acls_the_same_way(tmp_path: Path) -> None:
    _corpus(tmp_path)
    docs, problems = load_documents(str(tmp_path))
    assert not problems
    by_id = {d.id: d for d in docs}
    assert "memo.txt.meta.yaml" not in by_id  # a sidecar is metadata, not a document
    assert by_id["string.md"].acl == ("finance", "hr") and not by_id["string.md"].acl_problem
    assert by_id["r2"].acl == ("hr", "legal") and not by_id["r2"].acl_problem
    assert by_id["memo.txt"].acl == ("finance", "legal") and by_id["memo.txt"].title == "Board memo"
    assert by_id["hr/deep/review.txt"].acl == ("hr", "people-ops")
    assert by_id["hr/own.md"].acl == ("hr-leads",)
    assert by_id["plain.txt"].acl == ("public",)  # DOCUMENTS_WITHOUT_ACL=public (the default)
    for doc_id, meant in (("typo.md", ("hr",)), ("page.html", ("legal",)), ("r1", ("hr",))):
        assert "ACL key spelled" in by_id[doc_id].acl_problem, doc_id
        assert by_id[doc_id].acl == meant  # what a planner needs to apply the stricter ACL
    assert "ACL is empty" in by_id["empty.md"].acl_problem and by_id["empty.md"].acl == ()


def test_documents_without_acl_follow_the_policy(tmp_path: Path) -> None:
    _corpus(tmp_path)
    quarantine = {d.id: d for d in load_documents(str(tmp_path), LoadOptions(AclPolicy(without_acl="quarantine")))[0]}
    assert "DOCUMENTS_WITHOUT_ACL=quarantine" in quarantine["plain.txt"].acl_problem
    assert quarantine["memo.txt"].acl == ("finance", "legal") and not quarantine["memo.txt"].acl_problem
    assert quarantine["hr/deep/review.txt"].acl == ("hr", "people-ops")
    staff = {d.id: d for d in load_documents(str(tmp_path), LoadOptions(AclPolicy(without_acl="staff")))[0]}
    assert staff["plain.txt"].acl == ("staff",) and not staff["plain.txt"].acl_problem


def test_broken_sidecar_or_folder_acl_never_means_public(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Text whose sidecar is broken.")
    (tmp_path / "a.txt.meta.yaml").write_text("acl: [hr\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".acl").write_text("\n\n")
    (tmp_path / "sub" / "b.txt").write_text("Text whose folder ACL is empty.")
    by_id = {d.id: d for d in load_documents(str(tmp_path))[0]}
    assert "sidecar a.txt.meta.yaml unreadable" in by_id["a.txt"].acl_problem and by_id["a.txt"].acl == ()
    assert "ACL is empty" in by_id["sub/b.txt"].acl_problem and by_id["sub/b.txt"].acl == ()


def test_a_byte_order_mark_does_not_hide_front_matter_and_its_acl(tmp_path: Path) -> None:
    (tmp_path / "bom.md").write_bytes(b"\xef\xbb\xbf---\nacl: [hr]\n---\n# Reorg\n\nThe office merges.")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfPlain text from a Windows editor.")
    by_id = {d.id: d for d in load_documents(str(tmp_path))[0]}
    assert by_id["bom.md"].acl == ("hr",) and not by_id["bom.md"].acl_problem
    assert "acl:" not in by_id["bom.md"].text  # the front matter was read, not indexed as body text
    assert not by_id["bom.txt"].text.startswith("\ufeff")


def test_front_matter_that_never_closes_is_a_problem_not_the_default_acl(tmp_path: Path) -> None:
    (tmp_path / "open.md").write_text("---\nacl: [hr]\ntitle: Reorg\n\n# Reorg\n\nThe office merges.")
    [doc] = load_documents(str(tmp_path))[0]
    assert doc.acl == () and "never closed" in doc.acl_problem
