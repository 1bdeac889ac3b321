"""Answering with the hybrid: retrieve from Weaviate, prompt in the house format, generate, cite.

The model is the base model plus the adapter that `models:/<name>@champion` points
at (the base alone when there is no champion), loaded only after its files match the
sha256 recorded at registration (IntegrityError otherwise).

Citations are checked against the text the model was shown: a cited chunk must hold at
least `MIN_SUPPORT` of the answer's content words (the evaluation's grounding rule). A small
adapter often copies the right chunk but writes the wrong label; then the retrieved chunk
that does support the answer is cited instead (`relabelled`, the model's output kept in
`raw`). An answer no retrieved chunk supports is marked `grounded=False`, never passed off.
Citations map the labels the model wrote back to the chunks that were really retrieved;
a label that names no retrieved chunk is dropped and counted, never invented.

Each answer sentence is also checked on its own (`pipelines.behaviour.grounding`): it is cited
with the retrieved chunk that supports it (the model's own label when that one does) and the
span of that chunk it matches, or marked unsupported. With `STRICT_GROUNDING` unsupported
sentences are dropped from the text shown; an answer left with none becomes the abstention.

When no retrieved chunk's shown window is close enough to the question (`ANSWER_RELEVANCE_FLOOR`),
the answer is the abstention without running the model (`pipelines.behaviour.relevance`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.behaviour.grounding import sentence_support, split_sentences
from pipelines.behaviour.house_format import (
    ABSTENTION,
    ContextChunk,
    ParsedAnswer,
    abstention_answer,
    best_window,
    chat_messages,
    check_grounding,
    format_answer,
    is_abstention,
    parse_answer,
)
from pipelines.behaviour.relevance import below_floor, best_similarity
from pipelines.knowledge.embedding import shared_embedder
from pipelines.settings import Settings

log = logging.getLogger(__name__)
CONTEXT_WORDS = 30  # as in training: the adapter learnt the format on contexts of this size
MIN_SUPPORT = 0.8  # share of the answer's content words a cited chunk must contain (EvalConfig.min_support)


@dataclass(frozen=True)
class Citation:
    """A source the answer cites: its label in the prompt and the retrieved chunk behind it."""

    label: int
    chunk_id: str
    doc_id: str
    title: str
    source_url: str


@dataclass(frozen=True)
class SentenceCitation:
    """One answer sentence, the retrieved chunk that supports it best and the span it matches there."""

    text: str
    label: int | None  # the supporting chunk's label in the prompt; None when no chunk was shown
    chunk_id: str
    support: float  # in-order share of the sentence's content words found in that chunk (grounding.support)
    span: str  # the stretch of the chunk the sentence matches
    supported: bool  # support reaches the strict threshold (grounding.STRICT)
    cited_by_model: bool  # the model itself cited this chunk for the answer


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage."""

    retrieval_s: float
    generation_s: float
    model_load_s: float = 0.0


@dataclass(frozen=True)
class Answer:
    """The answer, the chunks it cites, which model wrote it and how long each stage took."""

    question: str
    text: str
    citations: list[Citation]
    model: str
    raw: str
    timings: Timings
    follows_format: bool
    retrieved: list[str] = field(default_factory=list)  # chunk ids, in prompt order
    unknown_labels: list[int] = field(default_factory=list)
    contexts: list[ContextChunk] = field(default_factory=list)  # what the model was shown, [label] -> text
    grounded: bool = False  # a cited chunk supports the answer
    relabelled: bool = False  # the model's labels did not support it; the supporting chunk is cited instead
    sentences: list[SentenceCitation] = field(default_factory=list)  # per sentence of the model's answer
    dropped: list[str] = field(default_factory=list)  # unsupported sentences removed (STRICT_GROUNDING)
    abstained: bool = False  # the answer says the sources do not hold the answer
    relevance: float | None = None  # best question-context similarity (None when the floor is off)
    below_floor: bool = False  # abstained without generating: no shown context was close enough to the question


@dataclass(frozen=True)
class AnsweringModel:
    """A loaded model, its tokenizer and a description (`name@champion vN` or the base id)."""

    model: Any
    tokenizer: Any
    description: str
    version: str | None = None  # the registered version; None for the base model alone
    adapter_sha256: str | None = None  # of the adapter files loaded, verified against the registry's record


# Settings objects are not hashable; models are cached by what identifies them.
_MODELS: dict[tuple[str, str, str, str | None], AnsweringModel] = {}


def _load(settings: Settings, version: str | None) -> AnsweringModel:
    key = (settings.tracking_uri, settings.registered_model, settings.base_model, version)
    if key not in _MODELS:
        _MODELS.clear()  # one model in memory at a time
        _MODELS[key] = load_version(settings, version)
    return _MODELS[key]


def decoding_note(gated: str | None, served: float) -> str | None:
    """Why a champion's gate numbers may not describe what is served: it was judged under another decoding.

    A version without the tag was registered before `ANSWER_CONTEXT_GUIDANCE` existed: judged with plain decoding.
    """
    try:
        judged = 1.0 if gated is None else float(gated)
    except ValueError:
        return f"gated under an unreadable ANSWER_CONTEXT_GUIDANCE ({gated!r}), served at {served:g}"
    if abs(judged - served) < 1e-9:
        return None
    return f"gated at ANSWER_CONTEXT_GUIDANCE={judged:g} but served at {served:g}: its gate judged other answers"


def load_version(settings: Settings, version: str | None) -> AnsweringModel:
    """Load a registered version (its adapter verified against the recorded sha256), or the base model for None.

    Uncached: the answering service loads a new champion beside the one serving.
    """
    import mlflow
    from pipelines.behaviour.base_model import load_model, load_tokenizer, pick_device, resolve_base_model
    from pipelines.behaviour.registry import GUIDANCE_TAG, adapter_sha256, download_version, version_tags
    from pipelines.tracking import configure

    if version is None:
        base = resolve_base_model(settings)
        return AnsweringModel(load_model(base), load_tokenizer(base), f"{base.model_id} (base, no champion)")
    configure(settings)
    # Load the very files whose hash was just checked against the one recorded at registration.
    local = download_version(settings, version)
    parts = mlflow.transformers.load_model(
        str(local), return_type="components", device=0 if pick_device() == "cuda" else None
    )
    tokenizer = parts["tokenizer"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    description = f"{settings.registered_model}@champion (v{version})"
    note = decoding_note(version_tags(settings, version).get(GUIDANCE_TAG), settings.answer_context_guidance)
    if note:  # served all the same: refusing the champion would leave readers without answers
        log.warning("%s: %s", description, note)
        description += f" [{note}]"
    return AnsweringModel(parts["model"].eval(), tokenizer, description, version, adapter_sha256(local / "peft"))


def load_answering_model(settings: Settings) -> AnsweringModel:
    """The champion adapter on its base model, or the base model alone; cached per champion version."""
    from pipelines.behaviour.registry import CHAMPION, alias_version

    return _load(settings, alias_version(settings, CHAMPION))


def contexts_from_hits(question: str, hits: Sequence[Any]) -> list[ContextChunk]:
    """Number retrieved chunks [1]..[k], each cut to the window most relevant to the question."""
    return [
        ContextChunk(i, hit.chunk_id, " ".join(hit.title.split()[:6]), best_window(hit.text, question, CONTEXT_WORDS))
        for i, hit in enumerate(hits, start=1)
    ]


def cite(raw: str, hits: Sequence[Any]) -> tuple[list[Citation], list[int], bool]:
    """Map the labels in a house-format answer to retrieved hits: (citations, unknown labels, format ok)."""
    parsed = parse_answer(raw)
    if parsed is None:
        return [], [], False
    citations = [
        Citation(n, hits[n - 1].chunk_id, hits[n - 1].doc_id, hits[n - 1].title, hits[n - 1].source_url)
        for n in parsed.labels
        if 1 <= n <= len(hits)
    ]
    return citations, [n for n in parsed.labels if not 1 <= n <= len(hits)], True


def supporting_labels(answer: str, labels: Sequence[int], contexts: Sequence[ContextChunk]) -> tuple[list[int], bool]:
    """The labels whose chunk supports `answer`: the model's own when any do, else any shown chunk that does.

    Returns (labels, relabelled); an empty list when no shown chunk supports the answer.
    """

    def supports(label: int) -> bool:
        parsed = ParsedAnswer(answer, (label,))
        return check_grounding(parsed, contexts, MIN_SUPPORT).grounded

    own = [label for label in labels if supports(label)]
    if own:
        return own, False
    others = [c.label for c in contexts if supports(c.label)]
    return others, bool(others)


def cite_sentences(answer: str, labels: Sequence[int], contexts: Sequence[ContextChunk]) -> list[SentenceCitation]:
    """Each sentence of `answer` with the shown chunk that supports it: the model's own label when that one
    does strictly, else whichever shown chunk supports it best; `supported` says whether that is enough."""
    if is_abstention(answer):
        return []
    by_label = {c.label: c for c in contexts}
    cited: list[SentenceCitation] = []
    for sentence in split_sentences(answer):
        best = sentence_support(sentence, contexts, list(labels))
        if not best.strict:
            anywhere = sentence_support(sentence, contexts, [c.label for c in contexts])
            best = anywhere if anywhere.support > best.support else best
        chunk = by_label.get(best.label) if best.label is not None else None
        cited.append(
            SentenceCitation(
                sentence,
                best.label,
                chunk.chunk_id if chunk else "",
                best.support,
                best.span,
                best.strict,
                best.label in labels,
            )
        )
    return cited


def strict_text(text: str, sentences: Sequence[SentenceCitation]) -> tuple[str, list[str]]:
    """The answer without its unsupported sentences (STRICT_GROUNDING), and those dropped.

    An answer with no supported sentence becomes the abstention: nothing unsupported is shown.
    """
    if not sentences:  # an abstention, or nothing to check
        return text, []
    kept = [s.text for s in sentences if s.supported]
    return (" ".join(kept) if kept else ABSTENTION), [s.text for s in sentences if not s.supported]


def ask(settings: Settings, question: str, k: int | None = None, user_groups: Sequence[str] = ()) -> Answer:
    """Answer `question` from the live index with the champion model, citing the chunks used."""
    from pipelines.knowledge.retrieval import search

    started = time.perf_counter()
    loaded = load_answering_model(settings)
    loaded_at = time.perf_counter()
    hits = search(settings, question, k=k or settings.answer_contexts, user_groups=user_groups)
    retrieved_at = time.perf_counter()
    return answer_from_hits(
        loaded, settings, question, hits, retrieval_s=retrieved_at - loaded_at, model_load_s=loaded_at - started
    )


def answer_from_hits(
    loaded: Any,
    settings: Settings,
    question: str,
    hits: Sequence[Any],
    retrieval_s: float = 0.0,
    model_load_s: float = 0.0,
    streamer: Any = None,
    embedder: Any = None,
) -> Answer:
    """Generate with `loaded` (model, tokenizer, description) from retrieved `hits`, and cite.

    The answering service calls this with the hits it retrieved under the caller's groups, the
    champion it took for this request and its encoder; `streamer` (a transformers streamer) receives
    tokens as made. When no shown context reaches `answer_relevance_floor`, the answer is the
    abstention and the model is not run (`pipelines.behaviour.relevance`).
    """
    from pipelines.behaviour.evaluation import generate

    contexts = contexts_from_hits(question, hits)
    relevance = None
    if settings.answer_relevance_floor > 0:
        encoder = embedder or shared_embedder(settings.embedding_model_path, settings.embedding_batch_size)
        relevance = best_similarity(encoder, question, contexts)
    skipped = relevance is not None and below_floor(relevance, settings.answer_relevance_floor)
    if skipped:
        raw, seconds = abstention_answer(), 0.0
        if streamer is not None:  # the reader of the stream waits for its end
            streamer.on_finalized_text(raw, stream_end=True)
    else:
        prompt = chat_messages(question, contexts)
        texts, _, seconds = generate(
            loaded.model,
            loaded.tokenizer,
            [prompt],
            settings.eval_max_new_tokens,
            batch_size=1,
            streamer=streamer,
            guidance=settings.answer_context_guidance,
            negatives=[chat_messages(question, [])],
        )
        raw = texts[0].strip()
    citations, unknown, ok = cite(raw, hits)
    parsed = parse_answer(raw)
    grounded = relabelled = False
    if parsed is not None:
        labels, relabelled = supporting_labels(parsed.answer, parsed.labels, contexts)
        grounded = bool(labels)
        if relabelled:
            citations, _, _ = cite(format_answer(parsed.answer, labels), hits)
    text = parsed.answer if parsed else raw
    sentences = cite_sentences(text, parsed.labels if parsed else (), contexts)
    text, dropped = strict_text(text, sentences) if settings.strict_grounding else (text, [])
    return Answer(
        question=question,
        text=text,
        citations=citations,
        model=loaded.description,
        raw=raw,
        timings=Timings(retrieval_s, seconds, model_load_s),
        follows_format=ok,
        retrieved=[h.chunk_id for h in hits],
        unknown_labels=unknown,
        contexts=contexts,
        grounded=grounded,
        relabelled=relabelled,
        sentences=sentences,
        dropped=dropped,
        abstained=is_abstention(text),
        relevance=relevance,
        below_floor=skipped,
    )
