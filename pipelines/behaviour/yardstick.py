"""The held-out yardstick: in-domain questions with their supporting passage, and an abstention set.

`eval.jsonl` holds three kinds of item, each an `InstructionRecord` plus where its answer comes from:

- `query`: the 50 real queries, answered from the best sentence of the report their judgement names;
- `passage`: questions written from one sentence of a report passage by fixed templates (the report's
  title and the sentence's key phrase), answered by that sentence: the answer is in the passage by
  construction, and the question reads like one a person would ask about that report;
- `abstention`: a question shown only chunks of *other* reports; the right answer is the house
  format's abstention (`Sources: none`).

Built deterministically (fixed seed, no outside service) by `write_training_sample`; the training
set never uses a chunk a yardstick answer comes from (nor its neighbours), and the leakage check
(`validation.py`) refuses any training record that copies a yardstick question or answer.
Every item belongs to the tuning or the reporting half (`pipelines.evalsplit`), keyed by the query
id for real queries and their abstention twins, by the source chunk id for passage questions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipelines.behaviour.house_format import ABSTENTION, ContextChunk, abstention_answer, content_words
from pipelines.evalsplit import Split, split_of

if TYPE_CHECKING:
    from pipelines.behaviour.dataset import InstructionRecord, _Chunk

Kind = Literal["query", "passage", "abstention"]
PASSAGE_ITEMS = 30  # at most; the templates fit 23 report passages of the shared set: 73 in-domain items
ABSTENTION_ITEMS = 24
CONTEXT_WORDS = 30  # as in dataset.py: the shape the adapter is trained on
_NOISE = re.compile(
    r"(?i)\b(?:subscribe|download|cookie|save it for later|share link|click here|sign up|newsletter|"
    r"copyright|all rights reserved|exhibit|figure|http|www\.|@)\b"
)
# Verbs a passage sentence may turn on, by base form: "<subject> <verb>s <object>." becomes
# "what does <subject> <verb>?". Copulas and modals have their own patterns.
_VERBS = frozenset(
    "reflect require show need face drive include offer mean create enable provide suggest affect shape "
    "reduce increase improve boost allow deliver exert hinder generate bring transform expect predict "
    "estimate threaten prioritize prefer".split()
)
_MODALS = frozenset("can could will would should must may might".split())
_COPULAS = frozenset("is are".split())
# Subjects that make no question on their own: pronouns, conjunctions, page chrome.
_SKIP_SUBJECTS = frozenset(
    "we i you our my your he she it they this these that those there here while but what and so although "
    "because however yet as if when related high latest".split()
)
_CONTRACTION = re.compile(r"(?i)(?:n[’']t|[’'](?:ll|re|ve|d|m))$")


@dataclass(frozen=True)
class YardstickItem:
    """One held-out item: the record the model is graded on and where its answer comes from."""

    record: InstructionRecord
    kind: Kind
    report: str  # the report that holds the answer ("" for abstention: none of the shown ones does)
    passage: str  # the supporting passage (the reference sentence); the abstention sentence for abstention
    split_key: str  # the id that decides the half (query id, or source chunk id)

    @property
    def split(self) -> Split:
        return split_of(self.split_key)

    def to_json(self) -> str:
        row = {
            **asdict(self.record),
            "kind": self.kind,
            "report": self.report,
            "passage": self.passage,
            "split_key": self.split_key,
            "split": self.split,
        }
        return json.dumps(row, ensure_ascii=False)


def read_yardstick(path: Path) -> list[YardstickItem]:
    """The yardstick items of an `eval.jsonl` (rows without metadata count as real queries, key = id)."""
    from pipelines.behaviour.dataset import InstructionRecord

    items = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        record = InstructionRecord.from_dict(row)
        kind = row.get("kind", "query")
        key = row.get("split_key") or record.id.removeprefix("eval-")
        items.append(YardstickItem(record, kind, row.get("report", ""), row.get("passage", ""), key))
    return items


def _rank(text: str) -> str:
    """A fixed pseudo-random order that does not depend on Python's hash seed."""
    return hashlib.sha256(text.encode()).hexdigest()


def _title(title: str) -> str:
    """A report's name as a reader would quote it: the part before a colon, at most 8 words."""
    head = title.split(":")[0].strip() if len(title.split(":")[0].split()) >= 2 else title
    parts = head.split()
    return "'" + " ".join(parts[:8]).rstrip(",;") + ("…'" if len(parts) > 8 else "'")


# Words that end a key phrase: function words plus verbs and vague words that make a question unreadable.
_FUNCTION = frozenset(
    "a an and are as at be by can do does for from has have how in into is it its of on or that the their this "
    "to was were what which will with who why than they them these those our we you your also but not been "
    "being had may might must should would could there here such some many most more much very just only "
    "over under about across between through while when where whether if then so both each other".split()
)


def _good_sentence(sentence: str) -> bool:
    parts = sentence.split()
    return (
        10 <= len(parts) <= 30
        and sentence.endswith(".")
        and sentence[0].isupper()
        and not _NOISE.search(sentence)
        and sum(ch.isalpha() for ch in sentence) / len(sentence) > 0.75
        and ". " not in sentence  # a missed sentence break (a footnote number, a caption)
        and not any(ch in sentence for ch in ':“”"')  # speaker labels and quotations
    )


def _is_plain_title(title: str) -> bool:
    return all(ord(ch) < 0x2000 or ch in "’‘“”–—…" for ch in title)


def _lower_first(subject: str, cased: Mapping[str, int]) -> str:
    """Lower-case the subject's first word unless the corpus writes it capitalised (a name, an acronym)."""
    first, _, rest = subject.partition(" ")
    if (len(first) > 1 and first.isupper()) or cased.get(first.lower(), 0) < cased.get(first, 0):
        return subject
    return " ".join(filter(None, (first.lower(), rest)))


def _question(sentence: str, title: str, cased: Mapping[str, int]) -> str | None:
    """A question the sentence answers, from its subject and main verb; None when no pattern fits.

    "<S> is a <X>."         -> "According to <T>, what is <S>?"
    "<S> are <V>ing <X>."   -> "According to <T>, what are <S> <V>ing?"
    "<S> can <V> <X>."      -> "According to <T>, what can <S> <V>?"
    "<S> reflects <X>."     -> "According to <T>, what does <S> reflect?"
    """
    tokens = sentence.rstrip(".").split()
    if tokens[0].lower() in _SKIP_SUBJECTS or not _is_plain_title(title):
        return None
    for i, token in enumerate(tokens[1:9], start=1):
        word, subject_tokens, rest = token.lower(), tokens[:i], tokens[i + 1 :]
        if any(not t.replace("-", "").replace("’", "").isalnum() or _CONTRACTION.search(t) for t in subject_tokens):
            return None  # punctuation inside the subject: a clause, a list, a speaker label, a contraction
        if len(rest) < 2 or i > 6 or sum(t[0].isupper() for t in subject_tokens) > 2:
            return None  # long subjects and runs of capitalised words are navigation, not prose
        subject = _lower_first(" ".join(subject_tokens), cased)
        head = f"According to {_title(title)}, what"
        if word in _COPULAS:
            if rest[0].endswith("ing") and rest[0].isalpha():
                return f"{head} {word} {subject} {rest[0]}?"
            return f"{head} {word} {subject}?" if rest[0].lower() in {"a", "an", "the"} else None
        if word in _MODALS:
            return f"{head} {word} {subject} {rest[0].lower()}?" if rest[0].lower() in _VERBS else None
        for base, aux in ((word, "do"), (word[:-1], "does"), (word[:-2], "does")):
            if base in _VERBS and (aux == "do" or word.endswith("s")):
                return f"{head} {aux} {subject} {base}?"
        if word in _FUNCTION - {"and", "of", "for", "in", "on", "with", "to"}:
            return None
    return None


def passage_items(
    chunks: Sequence[_Chunk], used: set[str], n: int = PASSAGE_ITEMS, seed: int = 13
) -> list[YardstickItem]:
    """`n` questions written from report passages (one per report, then two), none from a chunk in `used`."""
    from pipelines.behaviour.dataset import (
        CONTEXTS_PER_RECORD,
        _distractors,
        _is_plain,
        _record,
        _sentences,
    )

    rng = random.Random(f"yardstick-passages-{seed}")
    # How the corpus writes each word inside a sentence: a word mostly capitalised there is a name.
    cased = Counter(
        t.strip(",.;:()\"'“”")
        for chunk in chunks
        for prev, t in itertools.pairwise(chunk.text.split())
        if not prev.endswith((".", "!", "?", ":"))
    )
    # A sentence found in more than one report is page chrome or boilerplate, not a report's own content.
    reports_of: dict[str, set[str]] = {}
    for chunk in chunks:
        for sentence in _sentences(chunk.text):
            reports_of.setdefault(sentence, set()).add(chunk.report)
    items: list[YardstickItem] = []
    per_report: Counter[str] = Counter()
    taken: set[str] = set()
    for limit in (1, 2):  # one question per report first, a second only if that is not enough
        for chunk in sorted(chunks, key=lambda c: _rank(c.id)):
            if len(items) == n:
                return items
            if per_report[chunk.report] >= limit or chunk.id in used | taken or not _is_plain(chunk.text):
                continue
            own = [s for s in _sentences(chunk.text) if _good_sentence(s) and len(reports_of[s]) == 1]
            written = ((s, _question(s, chunk.title, cased)) for s in own)
            found = next(((s, q) for s, q in written if q), None)
            if found is None:
                continue
            sentence, question = found
            distractors = _distractors(rng, chunks, chunk.report, CONTEXTS_PER_RECORD - 1)
            record = _record(f"eval-p-{chunk.id}", question, chunk, sentence, distractors, rng)
            items.append(YardstickItem(record, "passage", chunk.report, sentence, chunk.id))
            per_report[chunk.report] += 1
            taken.add(chunk.id)
    return items


def abstention_items(
    chunks: Sequence[_Chunk],
    answerable: Sequence[YardstickItem],
    relevant: Mapping[str, set[str]],
    n: int = ABSTENTION_ITEMS,
    seed: int = 13,
) -> list[YardstickItem]:
    """`n` questions shown only chunks of reports that do not hold their answer.

    Half come from real queries (every report judged relevant to the query is excluded), half from
    passage questions (their own report is excluded). The shown chunks share few words with the
    question, so no unjudged report is likely to answer it either.
    """
    from pipelines.behaviour.dataset import CONTEXTS_PER_RECORD, InstructionRecord, Message, _is_plain, _short_title

    rng = random.Random(f"yardstick-abstention-{seed}")
    by_kind = {
        k: sorted((i for i in answerable if i.kind == k), key=lambda i: _rank(i.record.id))
        for k in ("query", "passage")
    }
    chosen = by_kind["query"][: n // 2] + by_kind["passage"][: n - n // 2]
    items = []
    for source in chosen:
        question = source.record.question
        excluded = relevant.get(source.split_key, set()) | {source.report}
        wanted = set(content_words(question))
        pool = [
            c
            for c in chunks
            if c.report not in excluded
            and _is_plain(c.text)
            and len(c.text.split()) >= 20
            and len(wanted & set(content_words(c.text))) <= 1
        ]
        shown = rng.sample(pool, CONTEXTS_PER_RECORD)
        contexts = tuple(
            ContextChunk(i, c.id, _short_title(c.title), " ".join(c.text.split()[:CONTEXT_WORDS]))
            for i, c in enumerate(shown, start=1)
        )
        messages = (Message("user", question), Message("assistant", abstention_answer()))
        record = InstructionRecord(f"abstain-{source.record.id.removeprefix('eval-')}", messages, contexts)
        items.append(YardstickItem(record, "abstention", "", ABSTENTION, source.split_key))
    return items


def held_out_chunks(items: Iterable[YardstickItem]) -> set[str]:
    """Chunks training must not answer from: every yardstick answer's source chunk and its neighbours
    (neighbouring chunks overlap, so a neighbour can hold the same sentence)."""
    held: set[str] = set()
    for item in items:
        cited = {c.chunk_id for c in item.record.contexts if f"[{c.label}]" in item.record.reference}
        for chunk_id in cited:
            report, _, number = chunk_id.rpartition("_chunk_")
            held.add(chunk_id)
            if number.isdigit():
                held |= {f"{report}_chunk_{int(number) + d}" for d in (-1, 1)}
    return held


def report_of(chunk_id: str) -> str:
    """The report a chunk id belongs to (`<report>_chunk_<n>`)."""
    report, marker, _ = chunk_id.rpartition("_chunk_")
    return report if marker else chunk_id


def query_items(records: Sequence[InstructionRecord]) -> list[YardstickItem]:
    """The real-query records as yardstick items: report and passage from the cited context."""
    from pipelines.behaviour.house_format import parse_answer

    items = []
    for record in records:
        parsed = parse_answer(record.reference)
        cited = [c for c in record.contexts if parsed and c.label in parsed.labels]
        report = report_of(cited[0].chunk_id) if cited else ""
        key = record.id.removeprefix("eval-")
        items.append(YardstickItem(record, "query", report, parsed.answer if parsed else "", key))
    return items


def item_kind_and_split(record: InstructionRecord) -> tuple[Kind, Split]:
    """An eval record's kind and half, from its id alone (`eval-q_3`, `eval-p-<chunk>`, `abstain-…`)."""
    name = record.id
    kind: Kind = "abstention" if name.startswith("abstain-") else "passage" if name.startswith("eval-p-") else "query"
    key = name.removeprefix("abstain-").removeprefix("eval-").removeprefix("p-")
    return kind, split_of(key)
