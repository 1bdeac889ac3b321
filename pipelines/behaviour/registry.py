"""The MLflow model registry for adapters: log, register, move aliases, roll back.

Adapters are logged with MLflow's transformers flavour and `base_model_path`, so
only the LoRA weights (a few MB) go into the artifact store. Aliases replace the
deprecated stages: `challenger` is the newest candidate, `champion` the one that
answers. Every alias move is written onto the model version as tags (who or which
run, why, when, and a JSON `alias_history`), visible in the MLflow UI; the
registered model keeps `champion_history` (version list) for rollbacks.

Fail closed: only a registry that says "no such alias" (or "no such model") reads
as "no champion"; every other error propagates. Each version carries the sha256 of
its adapter files, checked whenever a version is loaded. Promoting a version whose
gate did not pass needs an override with a reason. `audit_champion` finds alias
moves that the recorded history does not explain (a move in the MLflow UI).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.failures import IntegrityError, PromotionRejected, UnexplainedAliasMove
from pipelines.settings import Settings

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_REASONS = ("", "manual promotion", "no reason given")  # defaults of the DAG param / CLI flag
ADAPTER_ARTIFACT = "adapter"
ADAPTER_HASH_TAG = "adapter.sha256"
RUN_TAG = "retrain.run_id"  # the training run a version was registered from: one run, one version
GUIDANCE_TAG = "eval.answer_context_guidance"  # the decoding the gate judged a version with


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
    override: bool = False


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


def adapter_sha256(peft_dir: Path) -> str:
    """sha256 over the adapter folder: every file's relative name and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in peft_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(peft_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def verify_adapter(peft_dir: Path, expected: str | None, what: str) -> Path:
    """Check downloaded adapter files against their recorded hash; raises IntegrityError."""
    if not expected:
        raise IntegrityError(
            f"{what} records no {ADAPTER_HASH_TAG}; its adapter cannot be verified, refusing to load it"
        )
    found = adapter_sha256(peft_dir)
    if found != expected:
        raise IntegrityError(
            f"{what}: adapter files in the artifact store do not match the hash recorded at registration "
            f"({ADAPTER_HASH_TAG} {expected[:16]}…, found {found[:16]}…); refusing to load them"
        )
    return peft_dir


def version_tags(settings: Settings, version: str, name: str | None = None) -> dict[str, str]:
    """The tags of a registered version (an MLflow error raises)."""
    return dict(_client(settings).get_model_version(name or settings.registered_model, version).tags)


def download_version(settings: Settings, version: str, name: str | None = None) -> Path:
    """Download a registered version's model folder and verify its adapter; raises IntegrityError."""
    import mlflow

    name = name or settings.registered_model
    expected = _client(settings).get_model_version(name, version).tags.get(ADAPTER_HASH_TAG)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=version_source(settings, version, name)))
    verify_adapter(root / "peft", expected, f"{name} version {version}")
    return root


def register(settings: Settings, model_uri: str, tags: dict[str, str], run_id: str) -> str:
    """Register the logged adapter as a version of `settings.registered_model`, once per training run.

    A retried task finds the version its run already registered and reuses it (tags re-applied).
    """
    import mlflow

    client = _client(settings)
    name = settings.registered_model
    tags = {**tags, RUN_TAG: run_id}
    existing = _versions_of_run(client, name, run_id)
    if existing:
        version = str(existing[0])
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        log.info("%s: run %s already registered version %s; reusing it", name, run_id, version)
        return version
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def _versions_of_run(client: Any, name: str, run_id: str) -> list[int]:
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}' and tags.`{RUN_TAG}`='{run_id}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted(int(v.version) for v in found)


def alias_version(settings: Settings, alias: str, name: str | None = None) -> str | None:
    """The version an alias points at; None only when the registry says the alias (or model) does not exist.

    Any other error (5xx, timeout, connection refused) propagates: "cannot tell" must never read as
    "no champion", or a gate would skip the champion comparison.
    """
    from mlflow.exceptions import MlflowException

    name = name or settings.registered_model
    client = _client(settings)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":  # 404: no such registered model, so no alias
            return None
        if err.error_code != "INVALID_PARAMETER_VALUE":  # MLflow's answer for a missing alias (400)
            raise
    # INVALID_PARAMETER_VALUE also covers malformed requests: confirm from the model's own alias list.
    aliases = client.get_registered_model(name).aliases
    if alias in aliases:
        raise RegistryError(f"{name}@{alias}: lookup failed although the model lists it ({aliases[alias]})")
    return None


def _history(client: Any, name: str, alias: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return list(json.loads(tags.get(f"{alias}_history", "[]")))


def move_alias(
    settings: Settings,
    alias: str,
    version: str,
    actor: str,
    reason: str,
    name: str | None = None,
    override: bool = False,
) -> AliasMove:
    """Point `alias` at `version` and record who moved it, why and when on that version."""
    name = name or settings.registered_model
    client = _client(settings)
    client.get_model_version(name, version)  # raises for an unknown version
    previous = alias_version(settings, alias, name)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    move = AliasMove(alias, str(version), previous, actor, reason, now, override)
    client.set_registered_model_alias(name, alias, str(version))
    _record(client, name, move)
    if alias == CHAMPION:
        history = _history(client, name, alias)
        if previous and (not history or history[-1] != previous):
            history.append(previous)  # the alias was moved by hand in the MLflow UI since our last record
        client.set_registered_model_tag(name, f"{alias}_history", json.dumps([*history, str(version)]))
        signal_champion_moved(settings)
    log.info("%s@%s: %s -> %s by %s (%s)", name, alias, previous, version, actor, reason)
    return move


def signal_champion_moved(settings: Settings) -> None:
    """Touch the file the answering service watches, so it re-reads the registry now instead of at its next poll.

    The signal carries no version: the service always asks the registry, so whoever can touch the file
    can at most cause a re-check, never choose what loads.
    """
    path = settings.champion_signal_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(datetime.now(UTC).isoformat())


def _record(client: Any, name: str, move: AliasMove) -> None:
    current = client.get_model_version(name, move.version).tags
    history = json.loads(current.get("alias_history", "[]"))
    history.append(move.__dict__)
    for key, value in {
        "alias_history": json.dumps(history),
        f"{move.alias}.moved_by": move.actor,
        f"{move.alias}.reason": move.reason,
        f"{move.alias}.moved_at": move.at,
        f"{move.alias}.override": str(move.override).lower(),
    }.items():
        client.set_model_version_tag(name, move.version, key, value)


def promote(
    settings: Settings,
    version: str,
    actor: str,
    reason: str,
    alias: str = CHAMPION,
    name: str | None = None,
    override: bool = False,
) -> AliasMove:
    """Make `version` the `alias` (champion by default), recording the move.

    A champion must have passed its gate; otherwise `override` and a reason are required, and
    both are recorded with the actor. Raises PromotionRejected.
    """
    name = name or settings.registered_model
    if alias == CHAMPION:
        tags = _client(settings).get_model_version(name, version).tags
        if tags.get("gate.passed") != "true":
            verdict = f"gate {tags.get('gate.status', 'never ran')}: {tags.get('gate.reasons', 'no verdict recorded')}"
            if not override:
                raise PromotionRejected(
                    f"{name} version {version} did not pass its gate ({verdict[:300]}); "
                    "promoting it needs override=true and a reason"
                )
            if len(reason.strip()) < 3 or reason.strip() in DEFAULT_REASONS:
                raise PromotionRejected(f"overriding the gate of {name} version {version} needs a reason")
            log.warning("%s version %s promoted over its failed gate by %s: %s", name, version, actor, reason)
    return move_alias(settings, alias, version, actor, reason, name, override=override)


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
    signal_champion_moved(settings)
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


@dataclass(frozen=True)
class AliasRequest:
    """One `promote_model` run: point `alias` at `version`, or roll `champion` back."""

    action: str = "promote"  # "promote" | "rollback"
    version: str | None = None  # required for promote
    alias: str = CHAMPION
    reason: str = ""
    override: bool = False  # promote to champion although the version's gate did not pass
    model_name: str = ""  # empty: settings.registered_model

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AliasRequest:
        """From the DAG's params (`action`, `model_name`, `version`, `alias`, `reason`, `override`)."""
        return cls(
            action="rollback" if params.get("action") == "rollback" else "promote",
            version=str(params["version"]) if params.get("version") else None,
            alias=str(params.get("alias") or CHAMPION),
            reason=str(params.get("reason") or "").strip(),
            override=bool(params.get("override")),
            model_name=str(params.get("model_name") or ""),
        )


@dataclass(frozen=True)
class AppliedAliasMove:
    """What an `AliasRequest` did: the model and the move recorded on its version."""

    model: str
    move: AliasMove

    def to_dict(self) -> dict[str, Any]:
        return {**self.move.__dict__, "model": self.model}


def apply_alias_request(settings: Settings, request: AliasRequest, actor: str) -> AppliedAliasMove:
    """Run a `promote_model` request on behalf of `actor` (who and which run, recorded on the version)."""
    name = request.model_name or settings.registered_model
    if request.action == "rollback":
        move = rollback(settings, actor, request.reason or "no reason given", name)
    else:
        if not request.version:
            raise RegistryError("promote needs a version (param `version`)")
        move = promote(
            settings, request.version, actor, request.reason, alias=request.alias, name=name, override=request.override
        )
    return AppliedAliasMove(name, move)


@dataclass(frozen=True)
class AuditReport:
    """What `audit_champion` found: the live champion and the one the recorded history says."""

    model: str
    champion: str | None
    recorded: str | None
    explained: bool
    detail: str


def audit_champion(settings: Settings, name: str | None = None) -> AuditReport:
    """Check that `champion` is where the last recorded move put it; records and raises otherwise.

    An unexplained state is written onto the version concerned (tag `audit.unexplained_move` and an
    `alias_history` entry by an unknown actor) and raises UnexplainedAliasMove. It stays unexplained,
    and every audit fails, until a person records a move: `promote_model` (ratify) or rollback.
    """
    name = name or settings.registered_model
    client = _client(settings)
    current = alias_version(settings, CHAMPION, name)
    if current is None and not client.search_registered_models(f"name='{name}'"):
        return AuditReport(name, None, None, True, "no registered model yet")
    history = _history(client, name, CHAMPION)
    recorded = history[-1] if history else None
    if current == recorded:
        return AuditReport(name, current, recorded, True, f"champion {current} as last recorded")
    detail = (
        f"{name}@champion is {current or 'unset'} but the last recorded move left it at {recorded or 'unset'}: "
        "moved outside the gate and promote_model (for example in the MLflow UI)"
    )
    target = current or recorded
    assert target is not None  # current != recorded, so one of them is set
    tags = client.get_model_version(name, target).tags
    finding = json.dumps({"champion": current, "recorded": recorded})
    if tags.get("audit.unexplained_move") != finding:  # record each finding once, however often the audit runs
        now = datetime.now(UTC).isoformat(timespec="seconds")
        history_entries = json.loads(tags.get("alias_history", "[]"))
        history_entries.append(
            AliasMove(CHAMPION, current or "", recorded, "unknown (found by audit_registry)", detail, now).__dict__
        )
        client.set_model_version_tag(name, target, "alias_history", json.dumps(history_entries))
        client.set_model_version_tag(name, target, "audit.unexplained_move", finding)
        client.set_model_version_tag(name, target, "audit.detected_at", now)
    raise UnexplainedAliasMove(
        f"{detail}. Recorded on version {target}. Ratify it with promote_model (version {current}, a reason"
        f"{', override' if current else ''}) or undo it with promote_model action=rollback."
    )
