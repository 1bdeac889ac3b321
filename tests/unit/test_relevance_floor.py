"""Below the relevance floor answering abstains without running the model; evaluation counts it as served (#14)."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import TextIteratorStreamer

from pipelines.behaviour.answering import AnsweringModel, answer_from_hits
from pipelines.behaviour.evaluation import ItemResult, report_from_items, split_summary
from pipelines.behaviour.house_format import ABSTENTION, ContextChunk, abstention_answer
from pipelines.behaviour.relevance import best_similarity
from pipelines.knowledge.embedding import Embedder
from pipelines.knowledge.retrieval import SearchHit
from pipelines.settings import Settings

QUESTION = "How can AI agents transform retail banking operations?"
BANKING = "Agents promise to be the biggest accelerator of value from AI and the basis for the AI-first retail bank."
CARBON = "The XPRIZE Carbon Removal competition was launched to accelerate this transition to cheaper removal."
SOIL = "Regenerative farming practices restore soil organic matter and cut fertiliser runoff into rivers."


class ModelWasRun(AssertionError):
    """Raised by the stand-in model the moment anything asks it for anything."""


class RefusingModel:
    def __getattr__(self, name: str) -> Any:
        raise ModelWasRun(f"the model was consulted ({name})")


def hit(n: int, text: str) -> SearchHit:
    return SearchHit(f"doc{n}_chunk_0", f"doc{n}", f"Report {n}", "", text, 0, 0.5, f"beir://doc{n}", ())


LOADED = AnsweringModel(RefusingModel(), None, "stand-in that must not run")
OFF_TOPIC = [hit(1, CARBON), hit(2, SOIL)]


def test_the_floor_lies_between_on_topic_and_off_topic_context(embedder: Embedder) -> None:
    floor = Settings().answer_relevance_floor
    on_topic = [ContextChunk(1, "c1", "Carbon", CARBON), ContextChunk(2, "b7", "Banking", BANKING)]
    off_topic = [ContextChunk(1, "c1", "Carbon", CARBON), ContextChunk(2, "s3", "Soil", SOIL)]
    assert best_similarity(embedder, QUESTION, on_topic) >= floor > best_similarity(embedder, QUESTION, off_topic)
    assert best_similarity(embedder, QUESTION, []) == 0.0


def test_below_the_floor_the_answer_is_the_abstention_and_the_model_is_not_run(embedder: Embedder) -> None:
    answer = answer_from_hits(LOADED, Settings(), QUESTION, OFF_TOPIC, embedder=embedder)
    assert answer.below_floor and answer.abstained and answer.text == ABSTENTION
    assert answer.citations == [] and answer.raw == abstention_answer()
    assert answer.relevance is not None and answer.relevance < Settings().answer_relevance_floor


def test_a_streamed_answer_below_the_floor_ends_its_stream(embedder: Embedder) -> None:
    streamer = TextIteratorStreamer(None, timeout=5)  # type: ignore[arg-type]  # the floor never decodes tokens
    answer_from_hits(LOADED, Settings(), QUESTION, OFF_TOPIC, streamer=streamer, embedder=embedder)
    assert "".join(streamer) == abstention_answer()


def test_a_floor_of_zero_turns_the_check_off(embedder: Embedder) -> None:
    off = Settings().model_copy(update={"answer_relevance_floor": 0.0})
    with pytest.raises(ModelWasRun):
        answer_from_hits(LOADED, off, QUESTION, OFF_TOPIC, embedder=embedder)


def _item(kind: str, abstained: bool, grounded: bool, below: bool) -> ItemResult:
    return ItemResult(
        "candidate", f"{kind}-{abstained}-{grounded}-{below}", "q", "", "", True, 0.0, 0.0, True, 0.0, grounded,
        kind=kind, split="reporting", grounded_strict=grounded, abstained=abstained, below_floor=below,
    )  # fmt: skip


def test_served_shares_count_items_below_the_floor_as_abstentions() -> None:
    items = [
        _item("query", abstained=False, grounded=True, below=False),  # answered from its source
        _item("query", abstained=False, grounded=True, below=True),  # grounded, but answering would abstain
        _item("abstention", abstained=False, grounded=False, below=True),  # model answered; answering abstains
        _item("abstention", abstained=False, grounded=False, below=False),  # model answered, nothing stops it
    ]
    half = split_summary(report_from_items("candidate", items, 1.0, [], 0.0), "reporting")
    assert (half["grounded_strict"], half["served_grounded_strict"]) == (1.0, 0.5)
    assert (half["abstention"], half["served_abstention"]) == (0.0, 0.5)
    assert (half["false_abstention"], half["served_false_abstention"]) == (0.0, 0.5)


def test_the_reader_is_told_why_the_answer_is_an_abstention(embedder: Embedder) -> None:
    from pipelines.cli import render_answer

    shown = render_answer(answer_from_hits(LOADED, Settings(), QUESTION, OFF_TOPIC, embedder=embedder))
    assert ABSTENTION in shown and "no retrieved source is close enough to the question" in shown
