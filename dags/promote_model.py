"""
### Promote or roll back a registered model

Triggered by hand (no schedule). Moves an alias of a registered model in MLflow and records on the
model version who moved it (this Airflow run and its triggering user), why and when (tags
`alias_history`, `<alias>.moved_by`, `<alias>.reason`, `<alias>.moved_at`).

- **promote**: point `alias` (default `champion`) at `version`, e.g. the `challenger` that a
  `retrain_lora` run with policy `manual` left waiting.
- **rollback**: point `champion` back at the version that held it before the current one.

The same moves from a shell: `pipelines promote --version N` / `pipelines rollback`.
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
        "action": Param("promote", type="string", enum=["promote", "rollback"], title="Action",
                        description="promote: set the alias to Version; rollback: champion to the one before."),
        "model_name": Param("", type="string", title="Registered model",
                            description="Empty = settings (REGISTERED_MODEL, default house-style-lora)."),
        "version": Param(None, type=["null", "integer"], minimum=1, title="Version",
                         description="Model version to promote (required for promote)."),
        "alias": Param("champion", type="string", pattern="^[a-z][a-z0-9_-]*$", title="Alias",
                       description="Alias to move (promote only)."),
        "reason": Param("manual promotion", type="string", minLength=3, title="Reason",
                        description="Why; recorded on the model version."),
    },
)  # fmt: skip
def promote_model() -> None:
    @task
    def move_alias() -> dict:
        from pipelines.behaviour.registry import apply_alias_request
        from pipelines.settings import get_settings

        return apply_alias_request(get_settings(), get_current_context())

    move_alias()


promote_model()
