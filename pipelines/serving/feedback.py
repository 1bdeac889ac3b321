"""Feedback on answers: thumbs up / down and corrections, reviewed by a person, exported as training data.

`POST /v1/feedback` stores a rating (and optionally a corrected answer) with the question, the answer,
the model version and the chunks the answer cited, and the caller's subject (never the token). The
cited chunks are read back from Weaviate under the caller's own groups, so what is stored is the
indexed text (not whatever the client sent) and a caller can only cite what it may read.

`pipelines feedback review <id>` marks a correction fit for training; `pipelines feedback export`
writes reviewed corrections as instruction records (house format, the cited chunks as contexts) into
the training drop folder as a new `train.jsonl` (the current one plus the corrections), where the
drop starts `retrain_lora` and its validation (PII, leakage, format) runs before any training.
Fail closed: a correction citing a chunk that is not `public` is held back, because an adapter
trained on it would answer with restricted text to everyone.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pipelines.serving.schemas import _Strict
from pipelines.settings import Settings

log = logging.getLogger(__name__)

PUBLIC = "public"
FEEDBACK_ID_PREFIX = "feedback-"
MAX_TEXT_CHARS = 4000
MAX_CITED = 10


class FeedbackRequest(_Strict):
    """What the client sends: the exchange it rates, by chunk id (the server reads the chunks itself).

    Strict like every request: unknown fields are refused, and naming groups or an ACL is a 400.
    """

    question: str = Field(min_length=1, max_length=1000)
    answer: str = Field(max_length=MAX_TEXT_CHARS)
    model_version: str = Field(max_length=64)
    rating: Literal["up", "down"]
    correction: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    cited_chunk_ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_CITED)


class FeedbackReceipt(BaseModel):
    id: int
    status: Literal["stored"] = "stored"


class FeedbackRefused(ValueError):
    """The feedback cites chunks the caller cannot read (or that do not exist)."""


@dataclass(frozen=True)
class CitedChunk:
    """A chunk an answer cited, as the index holds it."""

    label: int
    chunk_id: str
    doc_id: str
    title: str
    text: str
    acl: tuple[str, ...]


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored piece of feedback."""

    id: int
    created_at: datetime
    subject: str
    question: str
    answer: str
    model_version: str
    rating: str
    correction: str | None
    citations: tuple[CitedChunk, ...]
    reviewed: bool
    reviewed_by: str | None


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "answer_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    subject: Mapped[str] = mapped_column(String(200))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(64))
    rating: Mapped[str] = mapped_column(String(8))
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False)
    reviewed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _record(row: _Row) -> FeedbackRecord:
    citations = tuple(
        CitedChunk(c["label"], c["chunk_id"], c["doc_id"], c["title"], c["text"], tuple(c["acl"]))
        for c in row.citations
    )
    return FeedbackRecord(
        row.id,
        row.created_at,
        row.subject,
        row.question,
        row.answer,
        row.model_version,
        row.rating,
        row.correction,
        citations,
        row.reviewed,
        row.reviewed_by,
    )


class FeedbackStore:
    """Feedback rows in a SQLAlchemy database (SQLite file by default, PostgreSQL in compose)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, pool_pre_ping=True)
        _Base.metadata.create_all(self.engine)  # one table; created if missing, never altered
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def add(self, subject: str, request: FeedbackRequest, citations: Sequence[CitedChunk]) -> int:
        """Store one piece of feedback; returns its id."""
        row = _Row(
            created_at=datetime.now(UTC),
            subject=subject,
            question=request.question,
            answer=request.answer,
            model_version=request.model_version,
            rating=request.rating,
            correction=(request.correction or "").strip() or None,
            citations=[c.__dict__ | {"acl": list(c.acl)} for c in citations],
            reviewed=False,
        )
        with self._session.begin() as session:
            session.add(row)
            session.flush()
            return int(row.id)

    def get(self, feedback_id: int) -> FeedbackRecord:
        """One row; KeyError when there is none."""
        with self._session() as session:
            row = session.get(_Row, feedback_id)
            if row is None:
                raise KeyError(f"no feedback with id {feedback_id}")
            return _record(row)

    def list(self, reviewed: bool | None = None) -> list[FeedbackRecord]:
        """Every row (or only reviewed / unreviewed ones), oldest first."""
        query = select(_Row).order_by(_Row.id)
        if reviewed is not None:
            query = query.where(_Row.reviewed == reviewed)
        with self._session() as session:
            return [_record(row) for row in session.scalars(query)]

    def review(self, feedback_id: int, reviewer: str) -> FeedbackRecord:
        """Mark a row reviewed (its correction may become training data); KeyError when there is none."""
        with self._session.begin() as session:
            row = _locked(session, feedback_id)
            row.reviewed, row.reviewed_by, row.reviewed_at = True, reviewer, datetime.now(UTC)
            return _record(row)


def _locked(session: Session, feedback_id: int) -> _Row:
    row = session.get(_Row, feedback_id, with_for_update=True)
    if row is None:
        raise KeyError(f"no feedback with id {feedback_id}")
    return row


def _live_chunks(
    client: Any, collection: str, chunk_ids: Sequence[str], properties: Sequence[str], where: Any = None
) -> dict[str, Mapping[str, Any]]:
    """Chunk id -> properties of those `chunk_ids` readers of `collection` (an alias) see now (and `where` admits)."""
    from weaviate.classes.query import Filter

    from pipelines.knowledge import index as idx

    ids = Filter.by_id().contains_any(list(chunk_ids))
    where = ids if where is None else where & ids

    def fetch(target: str, visible: Any) -> dict[str, Mapping[str, Any]]:
        found = client.collections.use(target).query.fetch_objects(
            filters=where if visible is None else where & visible,
            limit=len(chunk_ids),
            return_properties=list(properties),
        )
        return {str(obj.uuid): obj.properties for obj in found.objects}

    return idx.read_live(client, collection, fetch)  # one whole version, even when a commit lands mid-read


def cited_chunks(
    client: Any, collection: str, chunk_ids: Sequence[str], user_groups: Sequence[str]
) -> list[CitedChunk]:
    """The cited chunks as the live index holds them, read under the caller's groups.

    Raises FeedbackRefused when any of them is missing or not readable by the caller: a client cannot
    store text it may not read, nor text that is not in the index.
    """
    from pipelines.knowledge.retrieval import access_filter

    if not chunk_ids:
        return []
    by_id = _live_chunks(client, collection, chunk_ids, ["doc_id", "title", "text", "acl"], access_filter(user_groups))
    missing = [c for c in chunk_ids if c not in by_id]
    if missing:
        raise FeedbackRefused(f"{len(missing)} cited chunk(s) are not in the index or not readable by you")
    return [
        CitedChunk(
            label,
            chunk_id,
            str(by_id[chunk_id]["doc_id"]),
            str(by_id[chunk_id].get("title") or ""),
            str(by_id[chunk_id].get("text") or ""),
            tuple(by_id[chunk_id].get("acl") or ()),
        )
        for label, chunk_id in enumerate(chunk_ids, start=1)
    ]


def record_feedback(
    store: FeedbackStore, client: Any, settings: Settings, principal: Any, request: FeedbackRequest
) -> FeedbackReceipt:
    """Store feedback from `principal` (its subject and groups; never its token); FeedbackRefused on bad citations."""
    chunk_ids = [str(c) for c in request.cited_chunk_ids]
    citations = cited_chunks(client, settings.collection_alias, chunk_ids, sorted(principal.groups))
    feedback_id = store.add(principal.subject, request, citations)
    log.info(
        "feedback %d from %s: %s%s",
        feedback_id,
        principal.subject,
        request.rating,
        " with a correction" if request.correction else "",
    )
    return FeedbackReceipt(id=feedback_id)


# --- export into the training drop ---------------------------------------------------------------


@dataclass(frozen=True)
class ExportReport:
    """What `export_corrections` wrote and what it held back (feedback id -> why)."""

    path: Path | None
    exported: list[int]
    held_back: dict[int, str] = field(default_factory=dict)


def correction_record(feedback: FeedbackRecord) -> Any:
    """A reviewed correction as an instruction record: the question, the cited chunks, the corrected answer."""
    from pipelines.behaviour.answering import CONTEXT_WORDS
    from pipelines.behaviour.dataset import InstructionRecord, Message
    from pipelines.behaviour.house_format import ContextChunk, best_window, format_answer

    assert feedback.correction is not None
    contexts = tuple(
        ContextChunk(
            c.label, c.chunk_id, " ".join(c.title.split()[:6]), best_window(c.text, feedback.question, CONTEXT_WORDS)
        )
        for c in feedback.citations
    )
    answer = format_answer(feedback.correction, [c.label for c in contexts])
    messages = (Message("user", feedback.question), Message("assistant", answer))
    return InstructionRecord(f"{FEEDBACK_ID_PREFIX}{feedback.id}", messages, contexts)


def served_acls(settings: Settings, chunk_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The ACL each of `chunk_ids` has in the live index now; a chunk no longer served is absent.

    A Weaviate error raises: an export that cannot check the sources must not ship their text.
    """
    from pipelines.knowledge import index as idx

    ids = sorted(set(chunk_ids))
    if not ids:
        return {}
    with idx.connect(settings) as client:
        live = idx.alias_target(client, settings.collection_alias)
        found = _live_chunks(client, settings.collection_alias, ids, ["acl"]) if live is not None else {}
    return {chunk_id: tuple(props.get("acl") or ()) for chunk_id, props in found.items()}


def _hold_reason(feedback: FeedbackRecord, served: dict[str, tuple[str, ...]]) -> str | None:
    """Why a reviewed correction must not reach training data, or None.

    Judged on the ACLs recorded with the feedback *and* on the live index now: a document restricted,
    withdrawn or deleted since (a tighter ACL gives its chunks new ids) holds the correction back.
    """
    if not feedback.citations:
        return "cites no chunk: a correction needs the sources it answers from"
    restricted = sorted({c.doc_id for c in feedback.citations if tuple(c.acl) != (PUBLIC,)})
    if restricted:
        return f"cites restricted documents ({', '.join(restricted)}): training would teach their text to everyone"
    gone = sorted({c.doc_id for c in feedback.citations if c.chunk_id not in served})
    if gone:
        return (
            f"cites chunks no longer served ({', '.join(gone)}): their documents were restricted, withdrawn or "
            "changed since the feedback"
        )
    restricted_now = sorted({c.doc_id for c in feedback.citations if served[c.chunk_id] != (PUBLIC,)})
    if restricted_now:
        return f"cites documents restricted since the feedback ({', '.join(restricted_now)})"
    return None


def export_corrections(store: FeedbackStore, settings: Settings) -> ExportReport:
    """Write the current train.jsonl plus every reviewed correction into the training drop folder.

    Earlier exported corrections in train.jsonl are replaced, so exporting twice adds nothing twice.
    Nothing is validated here on purpose: the drop goes through the same gate as any training data.
    """
    from pipelines.behaviour.dataset import TRAIN_FILE, read_records

    held: dict[int, str] = {}
    records = []
    corrections = [f for f in store.list(reviewed=True) if f.correction is not None]
    served = served_acls(settings, [c.chunk_id for f in corrections for c in f.citations])
    for feedback in corrections:
        reason = _hold_reason(feedback, served)
        if reason:
            held[feedback.id] = reason
            log.warning("feedback %d held back: %s", feedback.id, reason)
        else:
            records.append(correction_record(feedback))
    if not records:
        return ExportReport(None, [], held)
    current = [
        r for r in read_records(settings.training_data_dir / TRAIN_FILE) if not r.id.startswith(FEEDBACK_ID_PREFIX)
    ]
    drop = settings.training_drop_dir
    drop.mkdir(parents=True, exist_ok=True)
    partial, target = drop / f".{TRAIN_FILE}.partial", drop / TRAIN_FILE
    partial.write_text("".join(r.to_json() + "\n" for r in [*current, *records]))
    os.replace(partial, target)  # the drop sensor never sees half a file
    (drop / f"{TRAIN_FILE}.done").touch()
    exported = [int(r.id.removeprefix(FEEDBACK_ID_PREFIX)) for r in records]
    log.info("exported %d reviewed correction(s) into %s (%d held back)", len(exported), target, len(held))
    return ExportReport(target, exported, held)


def feedback_records_json(records: Sequence[FeedbackRecord]) -> str:
    """Rows as JSON lines for `pipelines feedback list` (citations by chunk id, no chunk text)."""
    return "".join(
        json.dumps(
            {
                "id": r.id,
                "created_at": r.created_at.isoformat(),
                "subject": r.subject,
                "rating": r.rating,
                "model_version": r.model_version,
                "question": r.question,
                "correction": r.correction,
                "cited": [c.chunk_id for c in r.citations],
                "reviewed": r.reviewed,
            }
        )
        + "\n"
        for r in records
    )
