"""The MLflow model registry for adapters: log, register, move aliases, roll back.

Adapters are logged with MLflow's transformers flavour and `base_model_path`, so
only the LoRA weights (a few MB) go into the artifact store. Aliases replace the
deprecated stages: `challenger` is the newest candidate, `champion` the one that
answers. Every alias move is written onto the model version as tags (who or which
run, why, when, and a JSON `alias_history`), visible in the MLflow UI; the
registered model keeps `champion_history` (version list) for rollbacks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.settings import Settings

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
ADAPTER_ARTIFACT = "adapter"


class RegistryError(RuntimeError):
    """An alias move is impossible (unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class AliasMove:
    """One alias change, as recorded on the version."""

    alias: str
    version: str
    previous: str | None
    actor: str
    reason: str
    at: str


def _client(settings: Settings) -> Any:
    from mlflow import MlflowClient
    from pipelines.tracking import configure

    configure(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def log_adapter(model: Any, tokenizer: Any, base_model_path: str) -> str:
    """Log the PEFT adapter to the active run (base weights referenced, not copied); returns its model URI."""
    from importlib.metadata import version

    import mlflow

    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=ADAPTER_ARTIFACT,
        task="text-generation",
        base_model_path=base_model_path,
        # Explicit: MLflow's inferred list pins torchvision, which a text-only install lacks.
        pip_requirements=[f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "peft", "accelerate")],
    )
    return str(info.model_uri)


def download_adapter(settings: Settings, model_uri: str) -> Path:
    """Fetch a logged adapter model and return the folder with its PEFT weights."""
    import mlflow

    _client(settings)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    peft_dir = root / "peft"
    if not (peft_dir / "adapter_config.json").exists():
        raise RegistryError(f"{model_uri} holds no PEFT adapter (looked in {peft_dir})")
    return peft_dir


def register(settings: Settings, model_uri: str, tags: dict[str, str]) -> str:
    """Register the logged adapter as a new version of `settings.registered_model`, with lineage tags."""
    import mlflow

    _client(settings)
    version = mlflow.register_model(model_uri, settings.registered_model, tags=tags)
    return str(version.version)


def alias_version(settings: Settings, alias: str, name: str | None = None) -> str | None:
    """The version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(settings).get_model_version_by_alias(name or settings.registered_model, alias).version)
    except MlflowException:
        return None


def _history(client: Any, name: str, alias: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return list(json.loads(tags.get(f"{alias}_history", "[]")))


def move_alias(
    settings: Settings, alias: str, version: str, actor: str, reason: str, name: str | None = None
) -> AliasMove:
    """Point `alias` at `version` and record who moved it, why and when on that version."""
    name = name or settings.registered_model
    client = _client(settings)
    client.get_model_version(name, version)  # raises for an unknown version
    previous = alias_version(settings, alias, name)
    move = AliasMove(alias, str(version), previous, actor, reason, datetime.now(UTC).isoformat(timespec="seconds"))
    client.set_registered_model_alias(name, alias, str(version))
    _record(client, name, move)
    if alias == CHAMPION:
        history = _history(client, name, alias)
        if previous and (not history or history[-1] != previous):
            history.append(previous)  # the alias was moved by hand in the MLflow UI since our last record
        client.set_registered_model_tag(name, f"{alias}_history", json.dumps([*history, str(version)]))
    log.info("%s@%s: %s -> %s by %s (%s)", name, alias, previous, version, actor, reason)
    return move


def _record(client: Any, name: str, move: AliasMove) -> None:
    current = client.get_model_version(name, move.version).tags
    history = json.loads(current.get("alias_history", "[]"))
    history.append(move.__dict__)
    for key, value in {
        "alias_history": json.dumps(history),
        f"{move.alias}.moved_by": move.actor,
        f"{move.alias}.reason": move.reason,
        f"{move.alias}.moved_at": move.at,
    }.items():
        client.set_model_version_tag(name, move.version, key, value)


def promote(
    settings: Settings, version: str, actor: str, reason: str, alias: str = CHAMPION, name: str | None = None
) -> AliasMove:
    """Make `version` the `alias` (champion by default), recording the move."""
    return move_alias(settings, alias, version, actor, reason, name)


def rollback(settings: Settings, actor: str, reason: str, name: str | None = None) -> AliasMove:
    """Re-point `champion` to the version that held it before the current one."""
    name = name or settings.registered_model
    client = _client(settings)
    current = alias_version(settings, CHAMPION, name)
    history = _history(client, name, CHAMPION)
    while history and history[-1] == current:
        history.pop()
    if current is None or not history:
        raise RegistryError(f"{name}: no earlier champion to roll back to (history {history}, current {current})")
    target = history[-1]
    move = AliasMove(
        CHAMPION, target, current, actor, f"rollback: {reason}", datetime.now(UTC).isoformat(timespec="seconds")
    )
    client.set_registered_model_alias(name, CHAMPION, target)
    _record(client, name, move)
    client.set_registered_model_tag(name, f"{CHAMPION}_history", json.dumps(history))
    client.set_model_version_tag(name, current, "rolled_back_at", move.at)
    log.info("%s@champion rolled back %s -> %s by %s", name, current, target, actor)
    return move


def tag_version(settings: Settings, version: str, tags: dict[str, str], name: str | None = None) -> None:
    """Add tags (gate verdict, metrics) to a version."""
    client = _client(settings)
    for key, value in tags.items():
        client.set_model_version_tag(name or settings.registered_model, version, key, value)


def version_source(settings: Settings, version: str, name: str | None = None) -> str:
    """The model URI a registered version was created from."""
    return f"models:/{name or settings.registered_model}/{version}"


def actor_from_context(context: Mapping[str, Any]) -> str:
    """Who moves an alias from Airflow: the triggering user (when known) and the DAG run."""
    dag_run = context.get("dag_run")
    user = getattr(dag_run, "triggering_user_name", None) or "unknown user"
    return f"{user} via airflow {getattr(dag_run, 'dag_id', '?')}/{context.get('run_id', '?')}"


def apply_alias_request(settings: Settings, context: Mapping[str, Any]) -> dict[str, Any]:
    """Run a `promote_model` request (params `action`, `model_name`, `version`, `alias`, `reason`)."""
    params = context["params"]
    name = params.get("model_name") or settings.registered_model
    actor, reason = actor_from_context(context), str(params.get("reason") or "no reason given")
    if params.get("action") == "rollback":
        move = rollback(settings, actor, reason, name)
    else:
        if not params.get("version"):
            raise RegistryError("promote needs a version (param `version`)")
        move = promote(
            settings, str(params["version"]), actor, reason, alias=params.get("alias") or CHAMPION, name=name
        )
    return {**move.__dict__, "model": name}
