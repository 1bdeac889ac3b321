"""A short LoRA run really teaches the house format with valid citations, beats the base model and forgets little.

This trains SmolLM2-135M-Instruct with the pipeline's own `train_adapter` on a short configuration
(STEPS steps at the default 2e-3 on the top 16 layers, with the default KL penalty, 0.25: about 2.5 min on two idle
CPU cores) and scores base and candidate on the same held-out questions, exactly as the DAG's evaluate task does.
The shipped defaults (360 steps) are measured, not asserted, by `bench/lora_quality.py` (`make bench`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import ModelReport, evaluate_model, forgetting
from pipelines.behaviour.gate import GateThresholds
from pipelines.behaviour.retrain import RetrainRequest
from pipelines.behaviour.training import train_adapter
from pipelines.settings import Settings

pytestmark = pytest.mark.slow

# Only the knobs a retrain_lora run has (TrainConfig / EvalConfig), pinned here so a change of the
# shipped defaults does not silently change what this test measures.
STEPS, LEARNING_RATE, TOP_LAYERS, KL_WEIGHT = 48, 2e-3, 16, 0.25
# Share of held-out answers in the house format (the first 12 eval items). A miss or two is within what a 32-step run
# varies by from machine to machine (1.00 on one run, 0.83 in CI); the shipped defaults are measured in bench/.
FORMAT_LEARNT = 0.8


@dataclass(frozen=True)
class Outcome:
    base: ModelReport
    candidate: ModelReport
    losses: list[tuple[int, float]]
    thresholds: GateThresholds
    model: Any = None  # the trained adapter on its base, kept for answering (no second training run)
    tokenizer: Any = None


@pytest.fixture(scope="module")
def outcome(settings: Settings) -> Iterator[Outcome]:
    """Base and candidate scored on the same held-out questions and out-of-domain texts (one training run)."""
    request = RetrainRequest.from_settings(settings)
    config = replace(
        request.train, steps=STEPS, learning_rate=LEARNING_RATE, top_layers=TOP_LAYERS, kl_weight=KL_WEIGHT
    )
    data = load_training_data(request.data_dir)
    base = resolve_base_model(settings)
    tokenizer, model = load_tokenizer(base), load_model(base)
    before = evaluate_model("base", model, tokenizer, data.eval, data.ood, request.evaluation)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_adapter(model, tokenizer, data.train, config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = evaluate_model("candidate", result.model, tokenizer, data.eval, data.ood, request.evaluation)
    print(f"\nbase {before.metrics()}\ncandidate {after.metrics()}\nloss {result.losses}")
    print(f"training {STEPS} steps: {wall:.0f} s wall, {cpu:.0f} s CPU")
    yield Outcome(before, after, result.losses, request.thresholds, result.model, tokenizer)


def test_training_loss_on_answer_tokens_falls_by_more_than_half(outcome: Outcome) -> None:
    assert outcome.losses[-1][1] < outcome.losses[0][1] / 2


def test_base_model_does_not_write_the_house_format(outcome: Outcome) -> None:
    # What the adapter must teach is absent before training, so the next test measures learning.
    assert outcome.base.format_compliance < FORMAT_LEARNT
    assert outcome.base.citation_validity < FORMAT_LEARNT


def test_candidate_writes_the_house_format_with_valid_citations(outcome: Outcome) -> None:
    assert outcome.candidate.format_compliance >= FORMAT_LEARNT
    assert outcome.candidate.citation_validity >= FORMAT_LEARNT


def test_candidate_beats_the_base_model_rouge_l_by_the_gate_margin(outcome: Outcome) -> None:
    assert outcome.candidate.rouge_l >= outcome.base.rouge_l + outcome.thresholds.min_gain_over_base


def test_candidate_forgets_within_the_gate_bound(outcome: Outcome) -> None:
    # Out-of-domain cross-entropy rises by no more than the gate allows (5 %).
    assert forgetting(outcome.candidate, outcome.base) <= outcome.thresholds.max_forgetting


# The demo's question and user-style questions whose judged reports carry inline page chrome
# ("Save It For Later ... Download Article ... Share Link ... Subscribe") in the shipped sample.
USER_QUESTIONS = {
    "How can AI agents transform retail banking operations?": "dbbca5428ce80167",
    "What are the cost reduction strategies in carbon removal technologies?": "4f70f93d7a03efcd",
    "What do car buyers prioritize when purchasing vehicles globally?": "59b393dd936206d3",
    "How to capture opportunities in the midmarket segment?": "64d57c5c867501ed",
    "What are growth strategies for service firms?": "60c3ac62d1d05139",
}
DISTRACTORS = ("0a27c0aad48b87d3", "5ae310cc6edfce0b", "cb9aa301f78b750a", "59f11d5004ed84ad")
# A short run may answer one of the five with the house abstention (fail closed: no claim, no citation). Measured on
# the shipped data: 48 steps refused the service-firms question, 72 steps the banking one, and the shipped 360-step
# adapter answered all five (README, "The shipped recipe"). Every answer given must still be clean, supported and
# on topic.
ABSTENTIONS_ALLOWED = 1
BOILERPLATE = ("save it for later", "subscribe", "download article", "share link")


def test_demo_and_user_questions_get_on_topic_supported_answers_free_of_boilerplate(
    outcome: Outcome, kb: Settings, embedder: Any
) -> None:
    """Issue 14 item 6: what a user sees, from the real index (cleaned at ingest) and the trained adapter."""
    from tests_support import sample_reports, write_reports

    from pipelines.behaviour.answering import AnsweringModel, answer_from_hits
    from pipelines.behaviour.house_format import abstention_answer
    from pipelines.knowledge.reindex import run_reindex
    from pipelines.knowledge.retrieval import search

    wanted = set(USER_QUESTIONS.values()) | set(DISTRACTORS)
    write_reports(kb.data_dir / "documents", [r for r in sample_reports(42) if r["_id"] in wanted])
    assert run_reindex(kb, embedder=embedder).accepted
    loaded = AnsweringModel(outcome.model, outcome.tokenizer, "candidate (test configuration)")
    problems, abstained = [], []
    for question, report in USER_QUESTIONS.items():
        hits = search(kb, question, k=kb.answer_contexts)
        answer = answer_from_hits(loaded, kb, question, hits)
        report_of = {hit.chunk_id: hit.doc_id for hit in hits}  # chunk ids are object UUIDs: ask the hits
        supports = [(s.label, round(s.support, 2)) for s in answer.sentences]
        print(f"\n{question}\n  -> {answer.raw!r}\n  sentences {supports}")
        if any(b in answer.text.lower() for b in BOILERPLATE):
            problems.append(f"{question}: boilerplate in {answer.text!r}")
        if answer.abstained and answer.raw.strip() == abstention_answer():
            abstained.append(question)
        elif not answer.sentences or not all(s.supported for s in answer.sentences):
            problems.append(f"{question}: a sentence its citation does not support: {answer.text!r}")
        elif not {report_of.get(s.chunk_id) for s in answer.sentences} <= {report}:
            problems.append(f"{question}: off topic, supported by {[s.chunk_id for s in answer.sentences]}")
    assert not problems, "\n".join(problems)
    assert len(abstained) <= ABSTENTIONS_ALLOWED, f"abstained on {abstained}"
