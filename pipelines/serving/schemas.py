"""Request and response models of the answering service.

Requests are strict: unknown fields are refused (`extra="forbid"`), `k` and text lengths are
bounded, and filters may only name non-ACL properties. A request that tries to state its own
groups or ACL (a field, filter or query parameter named `acl`, `groups`, `group`) is refused
with its own error type, `group_injection`, which the app answers with 400: groups come from
the caller's identity, never from what the caller writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_QUERY_CHARS = 1000
MAX_K = 50
MAX_ASK_K = 10  # the prompt holds every context; more than this overflows the small model's window
# Names that would let a request claim groups or widen its ACL. Compared case-insensitively.
IDENTITY_NAMES = frozenset({"acl", "groups", "group", "user_groups"})
# Properties a caller may filter on (equality). Never `acl` (identity decides) nor `gen_from` /
# `gen_to` (the live generation decides what exists).
FILTERABLE = frozenset({"doc_id", "title", "section", "source_url"})
GROUP_INJECTION = "group_injection"


def identity_names(names: Iterable[str]) -> list[str]:
    """The names among `names` that try to state identity (groups or ACL)."""
    return sorted({n for n in names if str(n).strip().lower() in IDENTITY_NAMES})


def _refuse_identity(data: Any, where: str) -> None:
    if isinstance(data, dict):
        found = identity_names(data)
        if found:
            raise PydanticCustomError(
                GROUP_INJECTION,
                "{where} names {names}: groups come from your credentials, not from the request",
                {"where": where, "names": ", ".join(found)},
            )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_identity_fields(cls, data: Any) -> Any:
        _refuse_identity(data, "the request body")
        if isinstance(data, dict):
            _refuse_identity(data.get("filters"), "filters")
        return data


class SearchRequest(_Strict):
    """Hybrid search: `alpha` 0 = BM25 only, 1 = vector only (default HYBRID_ALPHA)."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_K)
    alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    filters: dict[str, str] = Field(default_factory=dict, description=f"equality on {sorted(FILTERABLE)}")

    @field_validator("filters")
    @classmethod
    def _filterable_only(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - FILTERABLE)
        if unknown:
            raise ValueError(f"cannot filter on {unknown}; filterable: {sorted(FILTERABLE)}")
        return value


class AskRequest(_Strict):
    """A question; `stream` asks for server-sent events (tokens, then the whole answer)."""

    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int | None = Field(default=None, ge=1, le=MAX_ASK_K, description="chunks to retrieve (default ANSWER_CONTEXTS)")
    stream: bool = False


class Hit(BaseModel):
    """One retrieved chunk and where it comes from."""

    chunk_id: str
    doc_id: str
    title: str
    section: str
    source_url: str
    position: int
    score: float
    text: str


class SearchResponse(BaseModel):
    hits: list[Hit]
    retrieval_ms: float


class Citation(BaseModel):
    """A cited chunk, with the text span the model was shown under `[label]`."""

    label: int
    chunk_id: str
    doc_id: str
    title: str
    section: str
    source_url: str
    span: str


class AskTimings(BaseModel):
    retrieval_ms: float
    generation_ms: float
    total_ms: float


class AskResponse(BaseModel):
    """The answer, its citations, whether a cited chunk supports it, and which model wrote it."""

    question: str
    answer: str
    citations: list[Citation]
    grounded: bool
    follows_format: bool
    model: str
    model_version: str
    timings: AskTimings


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
