"""
### Promote or roll back a registered model

Triggered by hand (no schedule). Moves an alias of a registered model in MLflow and records on the
model version who moved it (this Airflow run and its triggering user), why and when (tags
`alias_history`, `<alias>.moved_by`, `<alias>.reason`, `<alias>.moved_at`).

- **promote**: point `alias` (default `champion`) at `version`, e.g. the `challenger` that a
  `retrain_lora` run left waiting. A version whose gate did not pass becomes champion only with
  **Override** ticked and a **Reason**; both are recorded with who triggered the run.
- **rollback**: point `champion` back at the version that held it before the current one.

Then **audit_registry** checks that `champion` is where the recorded history says; a move made
elsewhere (the MLflow UI) is recorded on the version and fails the run. Promoting that version here
ratifies it (with a reason); rollback undoes it.

The same moves from a shell: `pipelines promote --version N [--override --reason "…"]` / `pipelines rollback`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="promote_model",
    description="Move a registered model's alias (promote a version, or roll champion back), with an audit trail",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # alias moves are read-modify-write on the registry: never two at once
    tags=["behaviour", "mlflow", "registry"],
    default_args={"owner": "behaviour-team", "retries": 0, "execution_timeout": timedelta(minutes=10)},
    params={
        "action": Param(
            "promote",
            type="string",
            enum=["promote", "rollback"],
            title="Action",
            description="promote: set the alias to Version; rollback: champion to the one before.",
        ),
        "model_name": Param(
            "",
            type="string",
            title="Registered model",
            description="Empty = settings (REGISTERED_MODEL, default house-style-lora).",
        ),
        "version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Version",
            description="Model version to promote (required for promote).",
        ),
        "alias": Param(
            "champion",
            type="string",
            pattern="^[a-z][a-z0-9_-]*$",
            title="Alias",
            description="Alias to move (promote only).",
        ),
        "reason": Param(
            "manual promotion",
            type="string",
            minLength=3,
            title="Reason",
            description="Why; recorded on the model version. Required (not the default) with Override.",
        ),
        "override": Param(
            False,
            type="boolean",
            title="Override a failed gate",
            description="Promote to champion although the version's gate did not pass; needs a Reason.",
        ),
    },
)
def promote_model() -> None:
    @task
    def move_alias() -> dict:
        from pipelines.behaviour.registry import AliasRequest, apply_alias_request
        from pipelines.orchestration import RunOrigin, fail_fast
        from pipelines.settings import get_settings

        context = get_current_context()
        with fail_fast():
            request, actor = AliasRequest.from_params(context["params"]), RunOrigin.of(context).actor
            return apply_alias_request(get_settings(), request, actor).to_dict()

    @task
    def audit_registry() -> dict:
        from dataclasses import asdict

        from pipelines.behaviour.registry import audit_champion
        from pipelines.orchestration import fail_fast
        from pipelines.settings import get_settings

        with fail_fast():
            return asdict(audit_champion(get_settings(), get_current_context()["params"].get("model_name") or None))

    move_alias() >> audit_registry()


promote_model()
