"""
### Retrain the house-style LoRA adapter

Runs **quarterly (00:00 UTC on the 1st of Jan/Apr/Jul/Oct)** and **whenever the `training_data`
asset is updated**; trigger it by hand with other params (base model, steps/epochs, LoRA rank, policy).

0. **audit_registry** — `champion` must be where the last recorded move put it; a move nobody recorded
   (e.g. in the MLflow UI) is written onto the version and fails the run until a person ratifies or undoes it.
1. **validate** — stages the exact bytes of `data/training/` (content-addressed, under
   `state/training-snapshots/<sha256>/`) and runs Great Expectations on them (roles, empty turns, token
   lengths, duplicates, PII/secrets, exact or near-duplicate train/eval overlap). A failure stops here.
   Every later step reads only the staged copy: a drop landing during the run is for the next run.
2. **version** — the staged snapshot is versioned with DVC (`training-snapshot.dvc`); hashes on the run.
3. **train** — LoRA (transformers + peft) on the base model; loss curve as metrics and a plot; the
   adapter is logged without copying base weights, and its sha256 recorded.
4. **evaluate** — base, candidate and current champion (its adapter hash verified) on the run's held-out
   questions (format, ROUGE-L, token-F1, grounding), forgetting on general text; per-item results as an
   artifact. A registry error fails the task (retried); it never reads as "no champion".
5. **register** — the run's version of the registered model (a retry reuses it), lineage and hash tags,
   alias `challenger`.
6. **decide** — the gate. With policy `auto` a passing challenger becomes `champion`, unless the champion
   moved since evaluate or the eval/OOD sets differ from the champion's (then it waits for a person, the
   yardstick diff on the run). With `manual` it waits: promote it with the `promote_model` DAG.

Everything lands in one MLflow run (experiment `retrain_lora`); each task returns its run id and URL.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.orchestration.assets import TRAINING_DATA_ASSET


@dag(
    dag_id="retrain_lora",
    description="Validate training data, train a LoRA adapter, evaluate, register and gate its promotion",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 0 1 1,4,7,10 *", timezone="UTC"), assets=[Asset(**TRAINING_DATA_ASSET)]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one training run at a time: they compete for the same CPU/GPU and registry aliases
    tags=["behaviour", "lora", "mlflow", "quarterly"],
    default_args={
        "owner": "behaviour-team",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "execution_timeout": timedelta(hours=6),
    },
    params={
        "base_model": Param(
            "",
            type="string",
            title="Base model",
            description="Hugging Face id or local folder; empty = the bundled SmolLM2-135M-Instruct.",
        ),
        "steps": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=100_000,
            title="Steps",
            description="Optimizer steps; empty = settings (LORA_STEPS).",
        ),
        "epochs": Param(
            0,
            type="number",
            minimum=0,
            maximum=100,
            title="Epochs",
            description="Whole passes over the training records; > 0 overrides Steps.",
        ),
        "lora_rank": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=256,
            title="LoRA rank",
            description="Rank r of the adapters (alpha = 2r); empty = settings (LORA_RANK).",
        ),
        "eval_items": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=1000,
            title="Eval items",
            description="Held-out questions scored per model; empty = settings (EVAL_ITEMS).",
        ),
        "promotion_policy": Param(
            "auto",
            type="string",
            enum=["auto", "manual"],
            title="Promotion policy",
            description="auto: a challenger that passes the gate becomes champion; "
            "manual: it waits for a person (promote_model DAG or MLflow UI).",
        ),
    },
)
def retrain_lora() -> None:
    def request():  # type: ignore[no-untyped-def]
        from pipelines.behaviour.retrain import RetrainRequest
        from pipelines.settings import get_settings

        return RetrainRequest.from_settings(get_settings(), get_current_context()["params"])

    @task(retries=0)
    def audit_registry() -> dict:
        from dataclasses import asdict

        from pipelines.behaviour.registry import audit_champion
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings

        with fail_fast():
            return asdict(audit_champion(get_settings()))

    @task(retries=0)
    def validate() -> str:
        from pipelines.behaviour.retrain import validate_data
        from pipelines.orchestration import RunOrigin, fail_fast
        from pipelines.settings import get_settings

        with fail_fast():
            return validate_data(get_settings(), request(), RunOrigin.of(get_current_context()).tags())

    @task
    def version(mlflow_run: str) -> str:
        from pipelines.behaviour.retrain import version_data
        from pipelines.orchestration import fail_fast
        from pipelines.orchestration.run_notes import note_mlflow_run
        from pipelines.settings import get_settings

        note_mlflow_run(get_settings(), get_current_context(), mlflow_run)  # the run page links MLflow
        with fail_fast():
            return version_data(get_settings(), mlflow_run)

    @task
    def train(mlflow_run: str) -> str:
        from pipelines.behaviour.retrain import train_candidate
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings

        with fail_fast():  # IntegrityError (the staged data changed) is not retried; service errors are
            return train_candidate(get_settings(), request(), mlflow_run)

    @task
    def evaluate(mlflow_run: str, model_uri: str) -> dict:
        from dataclasses import asdict

        from pipelines.behaviour.retrain import evaluate_candidate
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings

        with fail_fast():
            return asdict(evaluate_candidate(get_settings(), request(), mlflow_run, model_uri))

    @task
    def register(mlflow_run: str, model_uri: str, summary: dict) -> str:
        from pipelines.behaviour.retrain import EvaluationSummary, register_candidate
        from pipelines.settings import get_settings

        return register_candidate(get_settings(), mlflow_run, model_uri, EvaluationSummary(**summary))

    @task(retries=0)
    def decide(mlflow_run: str, version: str, summary: dict) -> dict:
        from dataclasses import asdict

        from pipelines.behaviour.retrain import EvaluationSummary, decide_promotion
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings
        from pipelines.tracking import run_link

        settings = get_settings()
        with fail_fast():
            decision = decide_promotion(settings, request(), mlflow_run, version, EvaluationSummary(**summary))
        return {**asdict(decision), "version": version, "run_id": mlflow_run, "run_url": run_link(settings, mlflow_run)}

    mlflow_run = validate()
    audit_registry() >> mlflow_run
    model_uri = train(mlflow_run)
    version(mlflow_run) >> model_uri  # train reads only the versioned snapshot
    summary = evaluate(mlflow_run, model_uri)
    decide(mlflow_run, register(mlflow_run, model_uri, summary), summary)


retrain_lora()
