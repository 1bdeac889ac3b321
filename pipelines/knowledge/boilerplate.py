"""Removing page chrome that documents share: the text no reader asked for.

HTML pages lose their navigation, cookie banners and footers at parse time
(trafilatura's main-content extraction, in `documents.parse_html`). Text that
arrives already flattened (JSONL rows, text files, PDFs) still carries the site
template inline, e.g. "Save It For Later Saved To My Saved Content Download
Article Share Link copied Subscribe ...". Such chrome is recognised by what makes
it chrome: the same words recur verbatim in many unrelated documents. Every run
counts, over the whole batch, in how many documents each run of `ngram_words`
words occurs; runs found in at least `min_documents` documents are marked, marked
runs close to each other are joined (the template's variable slot, e.g. the
newsletter's topic, sits between two fixed parts) if they recur together, and a
joined span with at least `min_span_words` marked words is cut. A short common
phrase ("at the same time") is never cut on its own: it is far below
`min_span_words`, and next to chrome it does not recur with it.

No maintained library does this for flattened text without a heavy pipeline
around it (datatrove's sentence dedup needs its own executor and signature files;
text-dedup's substring dedup needs an external suffix-array binary), so it is
done here in a page of code.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.knowledge.documents import PUBLIC, Document

if TYPE_CHECKING:
    from pipelines.settings import Settings

CLEANER_NAME = "shared-ngram-spans-v1"  # bump when the rule changes: the run logs it beside the counts
REMOVED_CHARS_KEY = "boilerplate_removed_chars"  # Document.metadata: validation names it in a quarantine reason
_WORD = re.compile(r"\S+")
_NOT_WORD = re.compile(r"\W+")


@dataclass(frozen=True)
class BoilerplateRule:
    """When a span counts as chrome shared across documents (see the module docstring)."""

    min_documents: int = 4
    ngram_words: int = 4
    max_gap_words: int = 4
    min_span_words: int = 8
    # Longer documents are left as they are (validation quarantines them for length anyway): shingling a
    # 15 MB text costs seconds and hundreds of MB for nothing.
    max_document_chars: int = 2_000_000

    def signature(self) -> dict[str, Any]:
        return {"name": CLEANER_NAME, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class DocumentCleaning:
    """What was cut from one document."""

    spans: int
    chars: int
    emptied: bool = False


@dataclass
class CleaningReport:
    """What one run cut, per document; logged to MLflow and shown in the run's summary."""

    rule: dict[str, Any]
    documents_seen: int
    cleaned: dict[str, DocumentCleaning] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the most frequent cut spans, from public documents only

    def totals(self) -> dict[str, int]:
        return {
            "boilerplate_docs_cleaned": len(self.cleaned),
            "boilerplate_spans_removed": sum(c.spans for c in self.cleaned.values()),
            "boilerplate_chars_removed": sum(c.chars for c in self.cleaned.values()),
            "boilerplate_docs_emptied": sum(c.emptied for c in self.cleaned.values()),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "documents_seen": self.documents_seen,
            **self.totals(),
            "examples": self.examples,
            "per_document": {k: dataclasses.asdict(v) for k, v in sorted(self.cleaned.items())},
        }


def boilerplate_rule(settings: Settings) -> BoilerplateRule:
    """The rule from the project settings."""
    return BoilerplateRule(
        settings.boilerplate_min_documents,
        settings.boilerplate_ngram_words,
        settings.boilerplate_max_gap_words,
        settings.boilerplate_min_span_words,
        settings.max_text_chars,
    )


def _words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, normalised form) of every whitespace-separated word; case and punctuation ignored."""
    return [(m.start(), m.end(), _NOT_WORD.sub("", m.group().lower())) for m in _WORD.finditer(text)]


def _shingles(words: Sequence[tuple[int, int, str]], n: int) -> list[int]:
    # Hashes, not tuples: a large batch holds millions of shingles. A collision can only mark a run
    # that must still join others into a span of `min_span_words` to be cut.
    return [hash(tuple(w[2] for w in words[i : i + n])) for i in range(len(words) - n + 1)]


def _template(block: Sequence[int], holders: dict[int, set[int]]) -> set[int]:
    """The documents holding at least half of a block's shingles: where this template recurs."""
    counts: Counter[int] = Counter(doc for shingle in block for doc in holders[shingle])
    return {doc for doc, count in counts.items() if 2 * count >= len(block)}


def find_shared_spans(texts: Sequence[str], rule: BoilerplateRule) -> list[list[tuple[int, int]]]:
    """Character spans to cut from each text (same order as `texts`)."""
    n = rule.ngram_words
    words = [_words(text) for text in texts]
    shingles = [_shingles(w, n) for w in words]
    frequency: Counter[int] = Counter()
    # Distinct texts, not files: one report filed four times is a copy, not chrome shared by four pages; counting
    # its copies would cut its whole body and empty every copy (found by CI: four drops of one report were all
    # quarantined, and a full rebuild then missed them at the gate).
    seen: set[str] = set()
    for text, doc_shingles in zip(texts, shingles, strict=True):
        if text not in seen:
            seen.add(text)
            frequency.update(set(doc_shingles))  # documents, not occurrences: a page repeating itself is not chrome
    holders: dict[int, set[int]] = {}  # frequent shingle -> the documents holding it
    for doc, doc_shingles in enumerate(shingles):
        for shingle in doc_shingles:
            if frequency[shingle] >= rule.min_documents:
                holders.setdefault(shingle, set()).add(doc)
    spans: list[list[tuple[int, int]]] = []
    for doc_words, doc_shingles in zip(words, shingles, strict=True):
        blocks: list[list[int]] = []  # starts of frequent shingles close enough to be one template
        for i, shingle in enumerate(doc_shingles):
            if shingle not in holders:
                continue
            if blocks and i - (blocks[-1][-1] + n) <= rule.max_gap_words:
                blocks[-1].append(i)
            else:
                blocks.append([i])
        doc_spans = []
        for block in blocks:
            # A template's parts recur together: a shingle stays only if it occurs in `min_documents` of the
            # documents that carry the template. A common phrase next to chrome ("At the same time,") does not.
            template = _template([doc_shingles[i] for i in block], holders)
            kept = [i for i in block if len(holders[doc_shingles[i]] & template) >= rule.min_documents]
            covered = {w for i in kept for w in range(i, i + n)}
            if len(covered) >= rule.min_span_words:
                doc_spans.append((doc_words[min(covered)][0], doc_words[max(covered)][1]))
        spans.append(doc_spans)
    return spans


def cut_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` without `spans`; the words around a cut are joined by one space, paragraph breaks stay."""
    for start, end in sorted(spans, reverse=True):
        before, after = text[:start].rstrip(" \t"), text[end:].lstrip(" \t")
        joint = " " if before and after and before[-1] != "\n" and after[0] != "\n" else ""
        text = before + joint + after
    return text.strip()


def remove_boilerplate(documents: Sequence[Document], rule: BoilerplateRule) -> tuple[list[Document], CleaningReport]:
    """The documents without shared chrome, and what was cut.

    A document cleaned to nothing is returned with empty text (never dropped): validation then
    quarantines it with a reason naming the cleaning. ACLs and ids are untouched.
    """
    report = CleaningReport(rule.signature(), len(documents))
    spans = find_shared_spans([d.text if len(d.text) <= rule.max_document_chars else "" for d in documents], rule)
    cleaned: list[Document] = []
    examples: Counter[str] = Counter()
    for document, cuts in zip(documents, spans, strict=True):
        if not cuts:
            cleaned.append(document)
            continue
        text = cut_spans(document.text, cuts)
        removed = len(document.text) - len(text)
        report.cleaned[document.id] = DocumentCleaning(len(cuts), removed, emptied=not text)
        if document.acl == (PUBLIC,):  # restricted text never reaches the run's logs
            examples.update(document.text[a:b][:200] for a, b in cuts)
        metadata = {**document.metadata, REMOVED_CHARS_KEY: removed}
        cleaned.append(dataclasses.replace(document, text=text, metadata=metadata))
    report.examples = [span for span, _ in examples.most_common(10)]
    return cleaned, report
