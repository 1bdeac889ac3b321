"""The behaviour layer fails closed, on a real MLflow registry with a real (tiny) training run.

One training run is shared by the module (its own registered model), and the tests build on each
other in order: the run trains on what `validate` staged although a drop replaced `train.jsonl`
mid-run; a retried `register` reuses its version; a failed gate needs an override with a reason;
a registry answering 503 (or not at all) during `evaluate` fails the step; `decide` refuses to move
a champion that moved since `evaluate`; the audit records a move made outside the recorded paths;
a drop that swaps the eval set never auto-promotes; a tampered adapter is refused by `ask`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.behaviour.dataset import InstructionRecord, read_records
from pipelines.behaviour.retrain import (
    EvaluationSummary,
    RetrainRequest,
    decide_promotion,
    evaluate_candidate,
    register_candidate,
    train_candidate,
    validate_data,
    version_data,
)
from pipelines.failures import IntegrityError, PromotionRejected, UnexplainedAliasMove
from pipelines.settings import Settings, get_settings

DAGS = Path(__file__).resolve().parents[2] / "dags"
TINY = {"steps": 8, "eval_items": 2, "promotion_policy": "auto"}


@dataclass(frozen=True)
class Trained:
    """The module's one training run and what happened around it."""

    run_id: str
    model_uri: str
    version: str
    summary: EvaluationSummary
    validated_sha256: str  # train.jsonl as it was when validate read it
    dropped_sha256: str  # train.jsonl after the mid-run drop
    validated_records: int  # records in train.jsonl when validate read it


@pytest.fixture(scope="module")
def env(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Own data project, registered model and experiment; set in the environment for the DAGs and the CLI."""
    from conftest import make_dvc_project

    project = make_dvc_project(tmp_path_factory.mktemp("behaviour-fail-closed") / "project")
    tag = uuid.uuid4().hex[:6]
    values = {
        "PIPELINES_DATA_DIR": str(project / "data"),
        "REGISTERED_MODEL": f"house-style-closed-{tag}",
        "TRAINING_EXPERIMENT": f"retrain_closed_{tag}",
        "EVAL_MAX_NEW_TOKENS": "32",
        # Fail within seconds when the registry errors, instead of MLflow's minutes of back-off.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    }
    mp = pytest.MonkeyPatch()
    for key, value in values.items():
        mp.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    mp.undo()
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _tracking(env: Settings) -> None:
    """Point MLflow's global client at the real server (a test may have pointed it elsewhere)."""
    from pipelines.tracking import configure

    configure(env)


def _request(settings: Settings, **overrides: object) -> RetrainRequest:
    return RetrainRequest.from_settings(settings, {**TINY, **overrides})


def _client(settings: Settings):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def _champion(settings: Settings) -> str | None:
    aliases = _client(settings).get_registered_model(settings.registered_model).aliases
    return aliases.get("champion")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, records: list[InstructionRecord]) -> None:
    path.write_text("".join(r.to_json() + "\n" for r in records))


@pytest.fixture(scope="module")
def trained(env: Settings) -> Trained:
    """validate, then a drop replaces train.jsonl, then version/train/evaluate/register run."""
    train_file = env.training_data_dir / "train.jsonl"
    validated, validated_records = _sha256(train_file), len(read_records(train_file))
    request = _request(env)
    run_id = validate_data(env, request)
    _write(train_file, read_records(train_file)[:20])  # the drop: 20 records instead of all
    dropped = _sha256(train_file)
    version_data(env, run_id)
    model_uri = train_candidate(env, request, run_id)
    summary = evaluate_candidate(env, request, run_id, model_uri)
    version = register_candidate(env, run_id, model_uri, summary)
    return Trained(run_id, model_uri, version, summary, validated, dropped, validated_records)


def test_a_drop_landing_after_validate_is_not_trained_on(env: Settings, trained: Trained) -> None:
    import mlflow

    assert trained.validated_sha256 != trained.dropped_sha256
    run = mlflow.get_run(trained.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["data.train_sha256"] == trained.validated_sha256
    assert tags["train.read_sha256"] == trained.validated_sha256  # what train_candidate really read
    assert trained.validated_records > 20
    assert metrics["train_records"] == trained.validated_records  # the validated file, not the dropped 20 records
    staged = Path(tags["data.snapshot_dir"])
    assert _sha256(staged / "train.jsonl") == trained.validated_sha256
    # The DVC version is of the staged snapshot, and the registered version carries the same hashes.
    dvc_file = env.data_dir.parent / "training-snapshot.dvc"
    assert tags["data.dvc_hash"] and tags["data.dvc_hash"] in dvc_file.read_text()
    version = _client(env).get_model_version(env.registered_model, trained.version).tags
    for key in ("data.train_sha256", "data.yardstick_sha256", "data.dvc_hash", "adapter.sha256"):
        assert version[key] == tags[key], key


def test_a_retried_register_reuses_the_version_of_its_run(env: Settings, trained: Trained) -> None:
    again = register_candidate(env, trained.run_id, trained.model_uri, trained.summary)
    assert again == trained.version
    versions = _client(env).search_model_versions(f"name='{env.registered_model}'")
    assert [v.version for v in versions] == [trained.version]


def test_a_version_whose_gate_failed_becomes_champion_only_with_an_override_and_a_reason(
    env: Settings, trained: Trained, airflow_db: Path
) -> None:
    from pipelines.behaviour.registry import promote
    from pipelines.cli import main

    strict = _request(env, min_gain_over_base=10.0)  # no adapter gains 10 ROUGE-L points: the gate fails
    decision = decide_promotion(env, strict, trained.run_id, trained.version, trained.summary)
    assert not decision.passed and _champion(env) is None
    assert main(["promote", "--version", trained.version]) == 1  # no override: refused
    with pytest.raises(PromotionRejected, match="needs a reason"):
        promote(env, trained.version, "tester", "", override=True)
    assert _champion(env) is None

    dag = _dag("promote_model")
    dag_run = dag.test(
        run_conf={
            "action": "promote",
            "version": int(trained.version),
            "override": True,
            "reason": "accepted by risk owner for the pilot",
        }
    )
    assert _states(dag_run) == {"move_alias": "success", "audit_registry": "success"}
    assert _champion(env) == trained.version
    tags = _client(env).get_model_version(env.registered_model, trained.version).tags
    assert tags["champion.override"] == "true"
    assert tags["champion.reason"] == "accepted by risk owner for the pilot"
    assert "promote_model" in tags["champion.moved_by"]
    assert json.loads(tags["alias_history"])[-1]["override"] is True


class _RegistryDown(BaseHTTPRequestHandler):
    """Forwards to the real MLflow server, except alias look-ups, which get 503 Service Unavailable."""

    upstream = ""

    def _forward(self) -> None:
        import requests

        if self.path.startswith("/api/2.0/mlflow/registered-models/alias"):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        reply = requests.request(self.command, self.upstream + self.path, data=body, headers=headers, timeout=60)
        self.send_response(reply.status_code)
        for key, value in reply.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_down(env: Settings) -> Iterator[Settings]:
    """Settings whose tracking URI is a real HTTP server answering 503 for the champion alias."""
    handler = type("Handler", (_RegistryDown,), {"upstream": env.tracking_uri})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield env.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{server.server_address[1]}"})
    finally:
        server.shutdown()
        server.server_close()


def test_registry_answering_503_during_evaluate_fails_the_step_and_keeps_the_champion(
    env: Settings, trained: Trained, registry_down: Settings
) -> None:
    from mlflow.exceptions import MlflowException

    champion = _champion(env)
    assert champion == trained.version
    with pytest.raises(MlflowException, match="503"):
        evaluate_candidate(registry_down, _request(env), trained.run_id, trained.model_uri)
    assert _champion(env) == champion


def test_unreachable_registry_is_an_error_not_an_absent_champion(env: Settings) -> None:
    import socket

    from mlflow.exceptions import MlflowException

    from pipelines.behaviour.registry import alias_version

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MlflowException):
        alias_version(env.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"}), "champion")
    assert alias_version(env, "no-such-alias") is None  # what the registry itself says is missing is None


def _hand_registered(env: Settings, trained: Trained) -> str:
    """Another version of the same adapter, registered by hand (lineage tags, no training run, no gate)."""
    import mlflow

    source = _client(env).get_model_version(env.registered_model, trained.version).tags
    tags = {k: v for k, v in source.items() if k.startswith(("data.", "adapter."))}
    return str(mlflow.register_model(trained.model_uri, env.registered_model, tags=tags).version)


def _summary(champion: str | None) -> EvaluationSummary:
    """Scores where the candidate clearly beats base and champion: only a hold can stop its promotion."""
    scores = {"rouge_l": 0.5, "format_compliance": 1.0, "grounding": 0.5, "ood_cross_entropy": 3.0}

    def items(rouge: float, fmt: float) -> dict[str, list[float]]:  # 40 items, each a little apart
        return {
            "rouge_l": [rouge + 0.01 * (i % 5) for i in range(40)],
            "format_ok": [fmt] * 40,
            "grounded": [float(i % 2) for i in range(40)],
            "ood_loss": [100.0 + i for i in range(25)],
        }

    return EvaluationSummary(
        {
            "base": {**scores, "rouge_l": 0.1, "format_compliance": 0.0},
            "candidate": scores,
            "champion": {**scores, "rouge_l": 0.3},
        },
        champion,
        {"base": items(0.1, 0.0), "candidate": items(0.5, 1.0), "champion": items(0.3, 1.0)},
    )


def test_decide_does_not_move_a_champion_that_moved_since_evaluate(env: Settings, trained: Trained) -> None:
    candidate, moved_to = _hand_registered(env, trained), _hand_registered(env, trained)
    evaluated = _champion(env)
    _client(env).set_registered_model_alias(env.registered_model, "champion", moved_to)  # as in the MLflow UI

    decision = decide_promotion(env, _request(env), trained.run_id, candidate, _summary(evaluated))
    assert decision.passed and decision.metrics["promoted"] == 0.0
    assert _champion(env) == moved_to
    tags = _client(env).get_model_version(env.registered_model, candidate).tags
    assert tags["gate.status"] == "awaiting approval" and "champion moved during the run" in tags["gate.holds"]


def test_audit_records_a_champion_move_nobody_recorded_and_fails_until_a_person_acts(env: Settings) -> None:
    from pipelines.behaviour.registry import audit_champion, rollback

    moved_to = _champion(env)
    assert moved_to is not None
    for _ in range(2):  # fails every time, records once
        with pytest.raises(UnexplainedAliasMove, match="MLflow UI"):
            audit_champion(env)
    tags = _client(env).get_model_version(env.registered_model, moved_to).tags
    assert json.loads(tags["audit.unexplained_move"])["champion"] == moved_to
    unknown = [h for h in json.loads(tags["alias_history"]) if h["actor"].startswith("unknown")]
    assert len(unknown) == 1
    rollback(env, "tester", "undo the unrecorded move")
    assert audit_champion(env).explained and _champion(env) != moved_to


def test_decide_promotes_when_nothing_moved_and_the_yardstick_is_the_same(env: Settings, trained: Trained) -> None:
    # The control for the holds above: the same decision, nothing changed under it, promotes.
    candidate = _hand_registered(env, trained)
    decision = decide_promotion(env, _request(env), trained.run_id, candidate, _summary(_champion(env)))
    assert decision.metrics["promoted"] == 1.0 and _champion(env) == candidate


def _dag(dag_id: str):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def _states(dag_run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _last_run(settings: Settings):  # type: ignore[no-untyped-def]
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow.search_runs(
        experiment_names=[settings.training_experiment], order_by=["start_time DESC"], output_format="list"
    )[0]


def test_a_drop_that_swaps_the_eval_set_and_poisons_train_never_becomes_champion(
    env: Settings, trained: Trained, airflow_db: Path
) -> None:
    import mlflow

    folder = env.training_data_dir
    original = read_records(Path(trained_snapshot(env, trained)) / "train.jsonl")
    answers = [r.messages[1] for r in original]
    random.Random(1).shuffle(answers)
    poisoned = [InstructionRecord(r.id, (r.messages[0], a), r.contexts) for r, a in zip(original, answers, strict=True)]
    _write(folder / "train.jsonl", poisoned)
    evals = read_records(folder / "eval.jsonl")
    _write(folder / "eval.jsonl", evals[:6])  # an easier, smaller yardstick arrives with the same drop
    champion = _champion(env)

    dag_run = _dag("retrain_lora").test(run_conf=TINY)
    assert _states(dag_run)["decide"] == "success", _states(dag_run)
    run = _last_run(env)
    assert run.data.tags["gate.status"] != "promoted" and _champion(env) == champion
    assert run.data.tags["gate.yardstick"] == "changed" and "yardstick changed" in run.data.tags["gate.holds"]
    # The champion was re-scored on the new yardstick in the same run.
    assert run.data.tags["champion.version_at_eval"] == champion and "champion.rouge_l" in run.data.metrics
    diff = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gate/yardstick_diff.json")
        ).read_text()
    )
    removed = diff["files"]["eval.jsonl"]["removed"]
    assert sorted(removed) == sorted(r.id for r in evals[6:])


def trained_snapshot(env: Settings, trained: Trained) -> str:
    import mlflow

    return str(mlflow.get_run(trained.run_id).data.tags["data.snapshot_dir"])


def test_a_tampered_adapter_is_refused_by_ask_and_by_evaluation(env: Settings, trained: Trained) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    import mlflow
    from pipelines.behaviour.answering import ask
    from pipelines.behaviour.registry import download_adapter, download_version
    from pipelines.cli import main

    champion = _champion(env)
    assert champion is not None
    download_version(env, champion)  # intact: loads
    # Replace the weights in the artifact store, as someone with write access to the bucket could.
    model = mlflow.get_logged_model(trained.model_uri.removeprefix("models:/"))
    weights = download_adapter(env, trained.model_uri) / "adapter_model.safetensors"
    tampered = weights.parent / "tampered" / weights.name
    tampered.parent.mkdir()
    blob = bytearray(weights.read_bytes())
    blob[-64:] = bytes(64)  # zero the last weights; the file still parses
    tampered.write_bytes(bytes(blob))
    get_artifact_repository(model.artifact_location).log_artifact(str(tampered), "peft")

    with pytest.raises(IntegrityError, match="do not match the hash recorded"):
        ask(env, "What do banks need to prepare for?")
    assert main(["ask", "What do banks need to prepare for?"]) == 1
    with pytest.raises(IntegrityError):
        evaluate_candidate(env, _request(env), trained.run_id, trained.model_uri)
