"""retrain_lora and promote_model end to end: real MLflow registry, DVC, GX and (tiny) training runs.

The tests share one registered model and run in order: invalid data stops a run;
a good run creates version 1 (promoted if its gate passes); a candidate trained on
shuffled answers is rejected by the in-domain quality rule while the champion stays;
promote (a failed gate only with an override) and rollback move the alias with an
audit trail; `ask` with the champion cites a retrieved chunk whose text supports it.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.behaviour.dataset import InstructionRecord, Message, read_records
from pipelines.settings import Settings, get_settings

DAGS = Path(__file__).resolve().parents[2] / "dags"
TINY = {"steps": 16, "eval_items": 4, "promotion_policy": "auto"}
# v1 answers `ask` below: with three contexts per training record, 16 steps do not yet write the house format
# (format 0.5 on 4 items); 48 steps do, as in tests/model (32 did on the 240-record data, 0.75 on the 553).
GOOD = {**TINY, "steps": 48}
SUPPORT = 0.8  # share of the answer's content words found in the cited chunk (EvalConfig.min_support)


@pytest.fixture(scope="module")
def env(stack: Settings, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Environment the DAG tasks read through get_settings(): own data project, model name, experiment."""
    from conftest import make_dvc_project

    project = make_dvc_project(tmp_path_factory.mktemp("behaviour") / "project")
    tag = uuid.uuid4().hex[:6]
    values = {
        "PIPELINES_DATA_DIR": str(project / "data"),
        "REGISTERED_MODEL": f"house-style-test-{tag}",
        "TRAINING_EXPERIMENT": f"retrain_lora_test_{tag}",
        "EVAL_MAX_NEW_TOKENS": "48",
        "LORA_LEARNING_RATE": "0.002",
    }
    mp = pytest.MonkeyPatch()
    for key, value in values.items():
        mp.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    mp.undo()
    get_settings.cache_clear()


def _dag(dag_id: str):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def _states(dag_run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _client(settings: Settings):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def _champion(settings: Settings) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client(settings).get_model_version_by_alias(settings.registered_model, "champion").version
    except MlflowException:
        return None


def _training_file(settings: Settings) -> Path:
    return settings.training_data_dir / "train.jsonl"


def _write(path: Path, records: list[InstructionRecord]) -> None:
    path.write_text("".join(r.to_json() + "\n" for r in records))


def _last_run(settings: Settings):  # type: ignore[no-untyped-def]
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow.search_runs(
        experiment_names=[settings.training_experiment], order_by=["start_time DESC"], output_format="list"
    )[0]


def test_invalid_training_data_stops_the_run_before_training(env: Settings) -> None:
    path = _training_file(env)
    good = path.read_text()
    records = read_records(path)
    bad = records[:20] + [
        records[0],
        InstructionRecord("pii", (Message("user", "SSN 123-45-6789?"), records[1].messages[1]), records[1].contexts),
    ]
    _write(path, bad)
    try:
        dag_run = _dag("retrain_lora").test(run_conf=TINY)
    finally:
        path.write_text(good)
    states = _states(dag_run)
    assert states["validate"] == "failed" and states["train"] != "success", states
    run = _last_run(env)
    assert run.info.status == "FAILED" and run.data.tags["validation.status"] == "failed"
    summary = run.data.tags["validation.summary"]
    assert "duplicate record id" in summary and "PII" in summary and "pii" in summary
    import mlflow

    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="validation/validation_report.json"
            )
        ).read_text()
    )
    assert report["passed"] is False and report["failures"]


def test_good_run_registers_a_challenger_with_lineage_and_a_recorded_gate(env: Settings) -> None:
    # The run must finish and the gate must decide; whether this tiny CPU run earns promotion is
    # the model test's question (tests/model), not this one's.
    dag_run = _dag("retrain_lora").test(run_conf=GOOD)
    assert set(_states(dag_run).values()) == {"success"}, _states(dag_run)
    run = _last_run(env)
    metrics, tags = run.data.metrics, run.data.tags
    print("\n" + json.dumps({k: round(v, 4) for k, v in sorted(metrics.items())}, indent=1))
    for key in ("base.rouge_l", "candidate.rouge_l", "candidate.format_compliance", "gate.passed"):
        assert key in metrics, key
    for key in ("data.dvc_hash", "git_revision", "base_model.id", "base_model.hash", "airflow.run_id"):
        assert tags.get(key), key
    client = _client(env)
    version = client.get_model_version_by_alias(env.registered_model, "challenger")
    assert version.version == "1"
    assert version.tags["data.dvc_hash"] == tags["data.dvc_hash"]
    assert version.tags["gate.status"] == ("promoted" if metrics["gate.passed"] else "rejected")
    assert version.tags["eval.answer_context_guidance"] == run.data.params["answer_context_guidance"] == "1.0"
    assert (_champion(env) == "1") == bool(metrics["gate.passed"])
    history = json.loads(client.get_model_version(env.registered_model, "1").tags["alias_history"])
    assert history[0]["alias"] == "challenger" and "retrain run" in history[0]["actor"]
    import mlflow

    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="evaluation")}
    assert {"evaluation/items.jsonl", "evaluation/summary.md"} <= artifacts
    # The gate's verdict carries its confidence intervals: on the version, in the run and in the summary table.
    assert version.tags["gate.ci.rouge_l.vs_base"].count("[") == 1, version.tags
    assert "gate.rouge_l.vs_base.low" in metrics and "gate.forgetting.high" in metrics
    summary = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/summary.md")
    assert "## Gate" in summary and "ROUGE-L vs base" in summary, summary
    assert "training/loss_curve.png" in {
        a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="training")
    }
    # The KL penalty is on by default: its term is on the run per logged window (every 5 steps and the last).
    assert float(run.data.params["kl_weight"]) > 0
    drift = client.get_metric_history(run.info.run_id, "train_kl_to_base")
    assert sorted(m.step for m in drift) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 48]
    assert all(m.value >= 0 for m in drift) and max(m.value for m in drift) > 0


def test_candidate_trained_on_shuffled_answers_is_rejected_and_champion_unchanged(env: Settings) -> None:
    path = _training_file(env)
    good = path.read_text()
    records = read_records(path)
    answers = [r.messages[1] for r in records]
    random.Random(0).shuffle(answers)
    _write(
        path, [InstructionRecord(r.id, (r.messages[0], a), r.contexts) for r, a in zip(records, answers, strict=True)]
    )
    champion_before = _champion(env)
    try:
        dag_run = _dag("retrain_lora").test(run_conf=TINY)
    finally:
        path.write_text(good)
    assert _states(dag_run)["decide"] == "success", _states(dag_run)
    run = _last_run(env)
    print("\n" + json.dumps({k: round(v, 4) for k, v in sorted(run.data.metrics.items())}, indent=1))
    assert run.data.tags["gate.status"] == "rejected"
    assert _champion(env) == champion_before
    v2 = _client(env).get_model_version(env.registered_model, "2")
    assert v2.tags["gate.passed"] == "false"
    import mlflow

    decision = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gate/decision.json")
        ).read_text()
    )
    failed = [r for r in decision["reasons"] if r.startswith("FAIL")]
    # Shuffled answers keep the format but lose the content: the rule that fails must be in-domain quality.
    assert any(r.startswith("FAIL: ROUGE-L") for r in failed), failed


def test_promote_and_rollback_move_champion_with_an_audit_trail(env: Settings) -> None:
    promote = _dag("promote_model")
    v1_passed = _client(env).get_model_version(env.registered_model, "1").tags["gate.passed"] == "true"
    dag_run = promote.test(
        run_conf={"action": "promote", "version": 1, "reason": "v1 reviewed by hand", "override": not v1_passed}
    )
    assert set(_states(dag_run).values()) == {"success"} and _champion(env) == "1"
    # `override` stated: dag.test() runs every call on one DAG object, whose params keep the last run's conf.
    dag_run = promote.test(
        run_conf={"action": "promote", "version": 2, "reason": "trying v2 by hand", "override": False}
    )
    assert _states(dag_run)["move_alias"] == "failed" and _champion(env) == "1"  # v2 failed its gate
    dag_run = promote.test(
        run_conf={"action": "promote", "version": 2, "reason": "trying v2 by hand", "override": True}
    )
    assert set(_states(dag_run).values()) == {"success"}
    assert _champion(env) == "2"
    v2 = _client(env).get_model_version(env.registered_model, "2").tags
    assert v2["champion.reason"] == "trying v2 by hand" and "promote_model" in v2["champion.moved_by"]
    assert v2["champion.override"] == "true"
    dag_run = promote.test(run_conf={"action": "rollback", "reason": "v2 answers badly"})
    assert set(_states(dag_run).values()) == {"success"}
    assert _champion(env) == "1"
    v1 = _client(env).get_model_version(env.registered_model, "1").tags
    assert "rollback: v2 answers badly" == v1["champion.reason"]
    assert [h["version"] for h in json.loads(v1["alias_history"]) if h["alias"] == "champion"][-2:] == ["1", "1"]


def test_ask_follows_the_house_format_and_cites_a_retrieved_chunk_that_supports_the_answer(
    env: Settings, kb: Settings, embedder
) -> None:  # type: ignore[no-untyped-def]
    from tests_support import sample_reports, write_reports

    from pipelines.behaviour.answering import ask
    from pipelines.behaviour.house_format import (
        ContextChunk,
        ParsedAnswer,
        check_grounding,
        content_words,
        parse_answer,
    )
    from pipelines.knowledge.reindex import run_reindex
    from pipelines.knowledge.retrieval import search

    write_reports(kb.data_dir / "documents", sample_reports(6))
    assert run_reindex(kb, embedder=embedder).accepted
    # This question's best shown context (0.34) is under the relevance floor, which would abstain without the
    # model; the test is about what the champion writes and cites (the floor: tests/unit/test_relevance_floor.py).
    update = {"registered_model": env.registered_model, "eval_max_new_tokens": 48, "answer_relevance_floor": 0.0}
    settings = kb.model_copy(update=update)
    question = "What do banks need to prepare for?"
    answer = ask(settings, question)
    print(f"\n{answer}")
    assert answer.model.endswith("(v1)")
    assert answer.retrieved and answer.timings.retrieval_s > 0 and answer.timings.generation_s > 0
    parsed = parse_answer(answer.raw)
    assert answer.follows_format and parsed is not None and answer.citations, answer.raw
    assert not answer.unknown_labels, "every cited label must be a retrieved chunk"
    assert {c.chunk_id for c in answer.citations} <= set(answer.retrieved)
    # Support, checked against the chunks as stored in Weaviate (not the prompt `ask` built): the answer's
    # content words must come from the text of a chunk it cites, the house rule evaluation grounds on.
    stored = {hit.chunk_id: hit.text for hit in search(settings, question, k=len(answer.retrieved))}
    support = {
        c.chunk_id: check_grounding(
            ParsedAnswer(answer.text, (1,)), [ContextChunk(1, c.chunk_id, "", stored[c.chunk_id])]
        ).support
        for c in answer.citations
    }
    assert content_words(answer.text) and max(support.values()) >= SUPPORT, (support, answer.raw)
    assert answer.grounded
