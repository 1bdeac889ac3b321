import json
from pathlib import Path

from pipelines.evalsplit import split_of

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden" / "queries.jsonl"


def _golden_ids() -> list[str]:
    return [json.loads(line)["_id"] for line in GOLDEN.read_text().splitlines() if line.strip()]


def test_split_is_a_fixed_function_of_the_id() -> None:
    # Pinned values: a change to the hash, salt or parity rule would silently reshuffle the halves.
    expected = ["tuning", "reporting", "tuning", "reporting", "tuning", "tuning"]
    assert [split_of(f"q_{n}") for n in range(1, 7)] == expected
    assert split_of("q_1") == split_of("q_1", salt="evalsplit-v1")
    assert {split_of(i) for i in _golden_ids()} == {"tuning", "reporting"}


def test_golden_queries_split_roughly_in_half() -> None:
    ids = _golden_ids()
    tuning = sum(split_of(i) == "tuning" for i in ids)
    assert len(ids) == 50
    assert 20 <= tuning <= 30, tuning  # binomial(50, 0.5): 20..30 holds ~94 % of salts; this salt must be in it


def test_other_salts_give_other_splits() -> None:
    ids = _golden_ids()
    assert [split_of(i) for i in ids] != [split_of(i, salt="other") for i in ids]
