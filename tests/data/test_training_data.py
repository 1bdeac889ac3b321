"""Expectations on the shipped training sample (data/training)."""

from __future__ import annotations

from pathlib import Path

from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.house_format import abstention_answer, check_grounding, parse_answer, words

TRAINING = Path(__file__).resolve().parents[2] / "data" / "training"


def test_sample_has_train_eval_and_ood_parts() -> None:
    data = load_training_data(TRAINING)
    assert len(data.train) >= 200 and len(data.eval) >= 40 and 20 <= len(data.ood) <= 30


def test_every_reference_answer_is_in_house_format_and_grounded_in_its_context() -> None:
    data = load_training_data(TRAINING)
    for record in data.train + data.eval:
        parsed = parse_answer(record.reference)
        assert parsed is not None, record.id
        if not parsed.labels:  # the house abstention cites nothing (tests/data/test_grounding_records.py)
            assert record.reference == abstention_answer(), record.id
            continue
        assert check_grounding(parsed, record.contexts, min_support=1.0).grounded, record.id
        assert len(record.contexts) == 3, record.id


def test_eval_uses_the_real_queries_and_never_shares_a_source_chunk_or_answer_with_training() -> None:
    data = load_training_data(TRAINING)
    # The yardstick (tests/data/test_yardstick.py): all 50 real queries, passage questions, an abstention set.
    assert {f"eval-q_{n}" for n in range(1, 51)} <= {r.id for r in data.eval}
    assert all(r.id.startswith(("eval-q_", "eval-p-", "abstain-")) for r in data.eval)
    cited = {c.chunk_id for r in data.eval for c in r.contexts if f"[{c.label}]" in r.reference}
    trained = {c.chunk_id for r in data.train for c in r.contexts if f"[{c.label}]" in r.reference}
    assert not cited & trained
    answers = {r.reference for r in data.eval} - {abstention_answer()}  # the abstention is a format, shared
    assert not answers & {r.reference for r in data.train}


def test_ood_texts_are_general_english_not_business() -> None:
    data = load_training_data(TRAINING)
    business = {"revenue", "banking", "market", "ceo", "investors", "profit"}
    for text in data.ood:
        assert len(text.text.split()) >= 20 and not business & set(words(text.text)), text.id


def test_synthetic_questions_do_not_depend_on_the_hash_seed() -> None:
    """train.jsonl must regenerate byte for byte: keyword ties are broken by the word, not by set order."""
    import subprocess
    import sys

    # Every keyword has the same (unknown) idf, so only the tie-break decides which two the question names.
    script = (
        "import random; from pipelines.behaviour.dataset import _synthetic_question as q; "
        "print(q(random.Random(1), 'Vendors, tariffs, margins, shipping and warehouses moved together.', {}, 'A'))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], env={"PYTHONHASHSEED": str(seed)}, capture_output=True, text=True
        )
        for seed in range(6)
    ]
    assert all(run.returncode == 0 for run in runs), [run.stderr[-500:] for run in runs]
    questions = {run.stdout for run in runs}
    assert len(questions) == 1, questions
    assert "margins" in questions.pop()  # alphabetical among equals: margins, moved, shipping, ...


def test_generated_records_never_repeat_a_question_with_its_answer() -> None:
    """The generator skips a record alike to one it wrote: the validator refuses a file with a duplicate.

    Abstention records all carry the same answer, so two chunks whose questions came out alike made one
    (train-0040 and train-0516 with a tenth of the records abstaining). Here 300 chunks hold sentences alike
    but for a 3-character tag (never a question keyword), so every question names the same two words, about 30
    abstain under 10 templates, and only the skip keeps the records distinct.
    """
    import random

    from pipelines.behaviour.dataset import _Chunk, _train_records

    sentence = "Vendors raised tariffs on shipping margins while warehouses moved inventory closer to buyers {:03d}."
    # No sentence of 8-22 words ending in a full stop: shown as a context, never answered from.
    filler = "Gardens bloom quietly under soft morning light while rivers wander past old stone bridges and hills"
    answering = [_Chunk(f"a{i}_chunk_0", f"a{i}", f"Report {i}", f"{sentence.format(i)} {filler}") for i in range(300)]
    others = [_Chunk(f"f{i}_chunk_0", f"f{i}", f"Other {i}", f"{filler} {filler}") for i in range(20)]
    records = _train_records(random.Random(1), answering + others, set(), 300, [])
    pairs = [(record.question, record.reference) for record in records]
    assert len(records) >= 150  # the distinct ones are still written
    assert len(pairs) == len(set(pairs))
