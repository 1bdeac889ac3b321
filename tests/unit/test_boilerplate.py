"""Boilerplate removal at ingest (issue 14 item 5): shared chrome is cut, content and ACLs stay."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.knowledge.boilerplate import BoilerplateRule, remove_boilerplate
from pipelines.knowledge.documents import Document, parse_html
from pipelines.knowledge.validation import ValidationLimits, validate_documents

ROOT = Path(__file__).resolve().parents[2]
CHROME = "Save It For Later Saved To My Saved Content Download Article Share Link copied Subscribe"
TOPICS = ["Retail banks", "Carbon removal", "Car buyers", "Midmarket firms", "Service costs"]


def _doc(doc_id: str, text: str, acl: tuple[str, ...] = ("public",)) -> Document:
    return Document(doc_id, doc_id, text, "jsonl", acl)


FACTS = [
    "AI agents could lift bank profits by 370 billion dollars before 2030.",
    "Direct air capture plants cut their cost per tonne by a third through deployment.",
    "Buyers in China now rank software features above engine power when choosing a car.",
    "Midmarket companies delivered half the shareholder return of large caps since 2018.",
    "Service firms protect customer experience while trimming back-office spending.",
]


def _report(i: int, topic: str) -> str:
    return f"{topic} report {i}. {CHROME} {FACTS[i]}"


def test_chrome_shared_by_many_documents_is_cut_and_the_content_stays() -> None:
    docs = [_doc(f"r{i}", _report(i, t)) for i, t in enumerate(TOPICS)]
    cleaned, report = remove_boilerplate(docs, BoilerplateRule())
    for before, after in zip(docs, cleaned, strict=True):
        assert "Save It For Later" not in after.text and "Download Article" not in after.text
        assert after.text == before.text.replace(f" {CHROME}", ""), after.text
        assert after.acl == before.acl and after.id == before.id
    assert report.totals()["boilerplate_docs_cleaned"] == 5
    assert report.totals()["boilerplate_chars_removed"] == 5 * (len(CHROME) + 1)


def test_chrome_in_fewer_documents_than_the_threshold_is_kept() -> None:
    docs = [_doc(f"r{i}", _report(i, t)) for i, t in enumerate(TOPICS[:3])]
    cleaned, report = remove_boilerplate(docs, BoilerplateRule(min_documents=4))
    assert [d.text for d in cleaned] == [d.text for d in docs] and report.cleaned == {}


def test_a_common_phrase_next_to_chrome_is_not_cut() -> None:
    """'at the same time' recurs in many documents, but not together with the chrome: it stays."""
    docs = [_doc(f"r{i}", _report(i, t)) for i, t in enumerate(TOPICS)]
    docs += [
        _doc(f"o{i}", f"Other note {i}: at the same time as demand grew, costs of item {i} fell.") for i in range(4)
    ]
    docs.append(_doc("edge", f"Edge case. {CHROME} At the same time, the bank hired {7} people."))
    cleaned, _ = remove_boilerplate(docs, BoilerplateRule())
    assert cleaned[-1].text == "Edge case. At the same time, the bank hired 7 people."


def test_restricted_text_never_reaches_the_report_examples() -> None:
    docs = [_doc(f"r{i}", _report(i, t), acl=("finance",)) for i, t in enumerate(TOPICS)]
    _, report = remove_boilerplate(docs, BoilerplateRule())
    assert report.totals()["boilerplate_spans_removed"] == 5 and report.examples == []


def test_a_document_cleaned_to_nothing_is_quarantined_with_a_reason(tmp_path: Path) -> None:
    docs = [_doc(f"r{i}", _report(i, t)) for i, t in enumerate(TOPICS)] + [_doc("only-chrome", CHROME)]
    cleaned, report = remove_boilerplate(docs, BoilerplateRule())
    assert report.cleaned["only-chrome"].emptied and cleaned[-1].text == ""  # kept, not dropped
    validated = validate_documents(cleaned, [], ValidationLimits(), tmp_path / "gx")
    (record,) = validated.quarantine
    assert record.document == "only-chrome" and "after boilerplate removal" in record.reason
    assert "only-chrome" not in validated.valid_ids and len(validated.valid_ids) == 5


def test_shared_reports_lose_their_page_chrome() -> None:
    """The 5 reports carrying the share bar inline lose it; no report loses a tenth of its text."""
    rows = [
        json.loads(line) for line in (ROOT / "data/documents/business-reports.jsonl").read_text().split("\n") if line
    ]
    docs = [Document(r["_id"], r["title"], r["text"], "jsonl") for r in rows]
    affected = {d.id for d in docs if "Save It For Later" in d.text}
    cleaned, report = remove_boilerplate(docs, BoilerplateRule())
    assert len(affected) == 5 and affected <= set(report.cleaned)
    assert not any("Save It For Later" in d.text or "Download Article" in d.text for d in cleaned)
    assert all(c.chars < 0.1 * len(d.text) for d in docs if (c := report.cleaned.get(d.id)))


def test_html_page_keeps_its_article_and_loses_navigation_and_cookie_banner() -> None:
    page = (
        "<html><head><title>AI in banking</title><meta name='acl' content='sales'></head><body>"
        "<nav><a href='/'>Home</a> <a href='/insights'>Insights</a> <a href='/about'>About us</a></nav>"
        "<div class='share'>Save It For Later Saved To My Saved Content Download Article</div>"
        "<div id='cookie-banner'>We use cookies to improve your experience. Accept all cookies</div>"
        "<article><h1>From branches to bots</h1><p>Retail banks could capture more than 370 billion dollars in "
        "annual profit from AI by 2030, according to the new report.</p><p>Agents will handle routine servicing, "
        "while human advisers focus on complex needs such as mortgages.</p></article>"
        "<footer>Subscribe to our newsletter. Privacy policy. Terms of use.</footer></body></html>"
    )
    document = parse_html("page.html", page.encode())
    assert "370 billion dollars" in document.text and "human advisers" in document.text
    for chrome in ("Download Article", "cookies", "About us", "Privacy policy"):
        assert chrome not in document.text
    assert document.acl == ("sales",) and document.title == "AI in banking"


def test_a_document_over_the_length_cap_is_left_for_validation_to_quarantine() -> None:
    docs = [_doc(f"r{i}", _report(i, t)) for i, t in enumerate(TOPICS)]
    huge = _doc("huge", _report(0, "Retail banks") * 40)
    cleaned, report = remove_boilerplate([*docs, huge], BoilerplateRule(max_document_chars=5_000))
    assert cleaned[-1] is huge and "huge" not in report.cleaned and len(report.cleaned) == 5


def test_a_document_filed_four_times_is_a_copy_not_chrome() -> None:
    """Four files holding one report share every word; that is one text filed four times, never cut to nothing."""
    body = " ".join(f"{t} markets grew while firms invested in {t} capabilities and people." for t in TOPICS * 12)
    docs = [_doc(f"copy{i}", body) for i in range(4)] + [_doc(f"r{i}", _report(i, t)) for i, t in enumerate(TOPICS)]
    cleaned, report = remove_boilerplate(docs, BoilerplateRule())
    assert [d.text for d in cleaned[:4]] == [body] * 4
    assert not any(f"copy{i}" in report.cleaned for i in range(4))
    assert report.totals()["boilerplate_spans_removed"] == 5  # the reports' own chrome is still cut
