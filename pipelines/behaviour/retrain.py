"""The retraining job, one function per step: validate, version, train, evaluate, register, decide.

Each step is what one task of `dags/retrain_lora.py` calls (and `pipelines retrain`
chains them). All steps write into one MLflow run, passed between them by id, so
the run shows the validation report, the loss curve, the evaluation table, the
gate verdict and the registered version together.

`validate` stages the bytes it validated (`pipelines.behaviour.snapshot`) and names
them in the run's tags; every later step reads that staged copy, never the live
folder. `decide` promotes only when nothing changed under the gate's feet: the
champion is the one evaluated, and the yardstick (eval + OOD sets) is the one the
champion was promoted on; otherwise a person decides.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.behaviour.dataset import TRAIN_FILE
from pipelines.behaviour.evaluation import EvalConfig, ModelReport
from pipelines.behaviour.gate import (
    GateThresholds,
    PromotionGateDecision,
    PromotionPolicy,
    Scores,
    decide,
    gate_table,
    promotion_outcome,
)
from pipelines.behaviour.snapshot import (
    SNAPSHOT_FOLDER,
    YARDSTICK_FILES,
    StagedData,
    record_diff,
    stage_training_data,
    staged_from_tags,
)
from pipelines.behaviour.training import TrainConfig
from pipelines.settings import Settings
from pipelines.tracking import run_link

log = logging.getLogger(__name__)
ROLES = ("base", "candidate", "champion")
YARDSTICK_ARTIFACTS = "yardstick"  # run artifact folder holding the eval and OOD files the run was graded on
DVC_OUT = "training-snapshot"  # DVC output (in the data project) versioning the staged snapshot of the last run


@dataclass(frozen=True)
class RetrainRequest:
    """Everything one retraining run may vary: settings' defaults, overridden by DAG params or CLI flags."""

    base_model: str
    train: TrainConfig
    evaluation: EvalConfig
    policy: PromotionPolicy
    thresholds: GateThresholds
    data_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings, overrides: Mapping[str, Any] | None = None) -> RetrainRequest:
        """Defaults from `settings`; keys of `overrides` (DAG params) that are set replace them."""
        o = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
        train = TrainConfig(
            steps=int(o.get("steps", settings.lora_steps)),
            epochs=float(o.get("epochs", 0.0)),
            batch_size=int(o.get("batch_size", settings.lora_batch_size)),
            learning_rate=float(o.get("learning_rate", settings.lora_learning_rate)),
            lora_rank=int(o.get("lora_rank", settings.lora_rank)),
            lora_alpha=2 * int(o.get("lora_rank", settings.lora_rank)),
            max_seq_len=settings.lora_max_seq_len,
            top_layers=settings.lora_top_layers,
            kl_weight=float(o.get("kl_weight", settings.lora_kl_weight)),
            seed=int(o.get("seed", settings.seed)),
        )
        evaluation = EvalConfig(
            items=int(o.get("eval_items", settings.eval_items)),
            max_new_tokens=settings.eval_max_new_tokens,
            context_guidance=settings.answer_context_guidance,  # the decoding answering uses
            relevance_floor=settings.answer_relevance_floor,  # for the served_* shares; the gate reads the model alone
            embedding_model_path=settings.embedding_model_path,
        )
        thresholds = GateThresholds(
            min_gain_over_base=float(o.get("min_gain_over_base", settings.gate_min_gain)),
            max_forgetting=float(o.get("max_forgetting", settings.gate_max_forgetting)),
            grounding_tolerance=settings.gate_grounding_tolerance,
        )
        policy = PromotionPolicy(str(o.get("promotion_policy", settings.promotion_policy)))
        base = str(o.get("base_model", settings.base_model))
        return cls(base, train, evaluation, policy, thresholds, settings.training_data_dir)


@dataclass
class EvaluationSummary:
    """Aggregate scores per role, small enough for XCom."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    champion_version: str | None = None
    # Per role, the per-item scores the gate resamples (a few hundred floats: still small for XCom).
    # A non-finite one (a diverged adapter's NaN loss) is None here: XCom is JSON, which has no NaN.
    items: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)

    def gate_scores(self, role: str) -> Scores | None:
        """What the gate reads for `role`; a score that was not finite comes back as NaN, which fails its rule."""
        s = self.scores.get(role)
        if s is None:
            return None
        items = {
            name: [math.nan if v is None else v for v in values] for name, values in self.items.get(role, {}).items()
        }
        grounding = s.get("grounded_strict", s.get("grounding", math.nan))
        return Scores(
            s.get("rouge_l", math.nan),
            s.get("format_compliance", math.nan),
            grounding,
            s.get("ood_cross_entropy", math.nan),
            items,
        )


def _settings_for(settings: Settings, request: RetrainRequest) -> Settings:
    return settings.model_copy(update={"base_model": request.base_model})


def _run(
    settings: Settings, run_id: str | None = None, tags: Mapping[str, str] | None = None, name: str | None = None
) -> Any:
    from pipelines.tracking import tracked_run

    return tracked_run(settings, settings.training_experiment, run_name=name, run_id=run_id, tags=tags)


def _staged(settings: Settings, run_id: str) -> StagedData:
    """The snapshot `validate` staged for this run, re-checked byte for byte (IntegrityError otherwise)."""
    import mlflow
    from pipelines.tracking import configure

    configure(settings)
    return staged_from_tags(mlflow.get_run(run_id).data.tags)


def validate_data(settings: Settings, request: RetrainRequest, tags: Mapping[str, str] | None = None) -> str:
    """Open the run, stage and validate the training data with GX; raises TrainingDataInvalid.

    The live folder is read once, into the staged snapshot; validation and every later step read the snapshot.
    """
    import mlflow
    from pipelines.behaviour.base_model import load_tokenizer, resolve_base_model
    from pipelines.behaviour.dataset import load_training_data
    from pipelines.behaviour.validation import DataLimits, validate_training_data
    from pipelines.failures import TrainingDataInvalid

    name = f"retrain-{(tags or {}).get('airflow.run_id', 'cli')}"
    with _run(settings, tags=tags, name=name) as run:
        gate = {f"gate.{k}": v for k, v in asdict(request.thresholds).items()}
        mlflow.log_params(
            {
                **request.train.as_params(),
                "eval_items": request.evaluation.items,
                "answer_context_guidance": request.evaluation.context_guidance,
                "policy": request.policy.value,
                **gate,
            }
        )
        base = resolve_base_model(_settings_for(settings, request))
        mlflow.set_tags(
            {"base_model.id": base.model_id, "base_model.path": base.path, "base_model.hash": base.weights_hash}
        )
        staged = stage_training_data(request.data_dir, settings.state_dir / SNAPSHOT_FOLDER)
        mlflow.set_tags(staged.tags())
        for name in YARDSTICK_FILES:  # kept with the run, so a later run can diff its yardstick against this one
            mlflow.log_artifact(str(staged.folder / name), YARDSTICK_ARTIFACTS)
        limits = DataLimits(max_tokens=request.train.max_seq_len, pii_patterns=tuple(settings.pii_patterns))
        report = validate_training_data(load_training_data(staged.folder), load_tokenizer(base), limits)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(report.write(Path(tmp) / "validation_report.json")), "validation")
        mlflow.set_tags(
            {
                "validation.status": "passed" if report.passed else "failed",
                "validation.summary": report.summary()[:4000],
            }
        )
        log.info(report.summary())
        if not report.passed:
            raise TrainingDataInvalid(f"{report.summary()}; report: {run_link(settings, run.info.run_id)}")
        return str(run.info.run_id)


def version_data(settings: Settings, run_id: str) -> str:
    """Version the staged snapshot (not the live folder) with DVC; tag the run with its hash and git revision."""
    import mlflow
    from pipelines.versioning import snapshot

    staged = _staged(settings, run_id)
    version = snapshot(settings.data_dir.parent, DVC_OUT, source=staged.folder)
    with _run(settings, run_id=run_id):
        mlflow.set_tags(version.tags())
    return version.dvc_hash


def train_candidate(settings: Settings, request: RetrainRequest, run_id: str) -> str:
    """Train the adapter, log its loss curve and the adapter (no base weights); returns the model URI."""
    from mlflow.entities import Metric

    import mlflow
    from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
    from pipelines.behaviour.dataset import load_training_data
    from pipelines.behaviour.registry import ADAPTER_HASH_TAG, adapter_sha256, download_adapter, log_adapter
    from pipelines.behaviour.training import plot_losses, train_adapter
    from pipelines.tracking import git_revision

    staged = _staged(settings, run_id)
    base = resolve_base_model(_settings_for(settings, request))
    tokenizer, model = load_tokenizer(base), load_model(base)
    records = load_training_data(staged.folder).train
    with _run(settings, run_id=run_id):
        mlflow.set_tags(
            {"git_revision": git_revision(settings.project_dir), "train.read_sha256": staged.files[TRAIN_FILE]}
        )
        mlflow.log_metric("train_records", len(records))

        def progress(step: int, total: int, loss: float, tokens_per_s: float) -> None:
            mlflow.log_metrics({"train_loss": loss, "train_tokens_per_s": tokens_per_s}, step=step)

        result = train_adapter(model, tokenizer, records, request.train, on_log=progress)
        mlflow.log_metrics(
            {
                "train_tokens_per_s": result.tokens_per_s,
                "train_seconds": result.seconds,
                "train_tokens": result.tokens,
                "final_train_loss": result.final_loss,
            }
        )
        if result.drift:  # the KL penalty's term (LORA_KL_WEIGHT > 0): how far from the base, one request for all
            now = int(time.time() * 1000)
            drift = [Metric("train_kl_to_base", value, now, step) for step, value in result.drift]
            mlflow.MlflowClient().log_batch(run_id, metrics=drift)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot_losses(result.losses, Path(tmp) / "loss_curve.png")), "training")
        model_uri = log_adapter(result.model, tokenizer, base.path)
        # Hash what the store now holds: this is what registration records and every load checks.
        digest = adapter_sha256(download_adapter(settings, model_uri))
        mlflow.set_tags({"candidate.model_uri": model_uri, ADAPTER_HASH_TAG: digest})
    return model_uri


def _reports(
    settings: Settings, request: RetrainRequest, run_id: str, model_uri: str
) -> tuple[list[ModelReport], str | None]:
    from peft import PeftModel

    import mlflow
    from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
    from pipelines.behaviour.dataset import load_training_data
    from pipelines.behaviour.evaluation import evaluate_model
    from pipelines.behaviour.registry import (
        ADAPTER_HASH_TAG,
        CHAMPION,
        alias_version,
        download_adapter,
        download_version,
        verify_adapter,
    )

    # The registry first: when it cannot say who the champion is, fail before loading anything.
    champion = alias_version(settings, CHAMPION)
    data = load_training_data(_staged(settings, run_id).folder)
    base = resolve_base_model(_settings_for(settings, request))
    tokenizer = load_tokenizer(base)
    expected = mlflow.get_run(run_id).data.tags.get(ADAPTER_HASH_TAG)
    candidate = verify_adapter(download_adapter(settings, model_uri), expected, f"candidate of run {run_id}")
    model = PeftModel.from_pretrained(load_model(base), str(candidate), adapter_name="candidate")
    if champion is not None:
        model.load_adapter(str(download_version(settings, champion) / "peft"), adapter_name=CHAMPION)
    model.eval()
    reports = []
    with model.disable_adapter():
        reports.append(evaluate_model("base", model, tokenizer, data.eval, data.ood, request.evaluation))
    for role in ("candidate", CHAMPION) if champion else ("candidate",):
        model.set_adapter(role)
        reports.append(evaluate_model(role, model, tokenizer, data.eval, data.ood, request.evaluation))
    return reports, champion


def evaluate_candidate(settings: Settings, request: RetrainRequest, run_id: str, model_uri: str) -> EvaluationSummary:
    """Evaluate base, candidate and current champion in this run; log metrics, table and per-item results."""
    import mlflow
    from pipelines.behaviour.evaluation import forgetting, split_summary, summary_table

    reports, champion = _reports(settings, request, run_id, model_uri)
    by_role = {r.model: r for r in reports}
    with _run(settings, run_id=run_id):
        for report in reports:
            mlflow.log_metrics(report.metrics())
            # The reporting half of the yardstick: the numbers the README quotes (never tuned on).
            half = split_summary(report, "reporting")
            mlflow.log_metrics({f"{report.model}.reporting.{k}": v for k, v in half.items()})
        mlflow.log_metric("forgetting.ood_ce_rise", forgetting(by_role["candidate"], by_role["base"]))
        with tempfile.TemporaryDirectory() as tmp:
            items = Path(tmp) / "items.jsonl"
            items.write_text(
                "".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for r in reports for i in r.items)
            )
            (Path(tmp) / "summary.md").write_text(summary_table(reports) + "\n")
            mlflow.log_artifacts(tmp, "evaluation")
        if champion:
            mlflow.set_tag("champion.version_at_eval", champion)
    log.info("\n%s", summary_table(reports))
    return summarise(reports, champion)


def summarise(reports: Sequence[ModelReport], champion: str | None) -> EvaluationSummary:
    """The scores the gate reads (`EvaluationSummary.gate_scores`) from the evaluated models' reports."""
    # Finite values only: XCom is JSON (no NaN in PostgreSQL), and `abstention` is NaN when no abstention item ran.
    scores = {
        r.model: {k: v for k, v in asdict(r).items() if isinstance(v, float) and math.isfinite(v)} for r in reports
    }
    items = {
        r.model: {name: [v if math.isfinite(v) else None for v in values] for name, values in r.per_item().items()}
        for r in reports
    }
    return EvaluationSummary(scores, champion, items)


def register_candidate(settings: Settings, run_id: str, model_uri: str, summary: EvaluationSummary) -> str:
    """Register the adapter as a new version with lineage tags and point `challenger` at it."""
    import mlflow
    from pipelines.behaviour.registry import CHALLENGER, GUIDANCE_TAG, move_alias, register

    run = mlflow.get_run(run_id)
    prefixes = ("data.", "base_model.", "airflow.", "git_", "adapter.")
    lineage = {k: v for k, v in run.data.tags.items() if k.startswith(prefixes)}
    candidate = summary.scores["candidate"]
    tags = {**lineage, "mlflow.run_id_source": run_id, **{f"eval.{k}": f"{v:.4f}" for k, v in candidate.items()}}
    # The decoding the gate judged with: serving compares it with its own (`answering.decoding_note`).
    tags[GUIDANCE_TAG] = run.data.params.get("answer_context_guidance", "1.0")
    version = register(settings, model_uri, tags, run_id)
    move_alias(settings, CHALLENGER, version, actor=f"retrain run {run_id}", reason="new candidate from retraining")
    with _run(settings, run_id=run_id):
        mlflow.set_tags({"registered.version": version, "registered.model": settings.registered_model})
    return version


def decide_promotion(
    settings: Settings, request: RetrainRequest, run_id: str, version: str, summary: EvaluationSummary
) -> PromotionGateDecision:
    """Apply the gate; with policy `auto` a passing challenger becomes champion, else the champion stays.

    Before moving anything the champion is re-read: if it is not the one `evaluate` compared against, or
    the yardstick differs from the one the champion was promoted on, a person decides (`holds`).
    """
    import mlflow
    from pipelines.behaviour.registry import CHAMPION, alias_version, promote, tag_version

    candidate, base = summary.gate_scores("candidate"), summary.gate_scores("base")
    assert candidate is not None and base is not None, "evaluation must score base and candidate"
    decision = decide(candidate, base, summary.gate_scores("champion"), request.thresholds)
    holds = []
    current = alias_version(settings, CHAMPION)  # errors propagate: the task fails, nothing moves
    if current != summary.champion_version:
        holds.append(
            f"champion moved during the run (v{summary.champion_version} at evaluate, v{current} now): "
            "the comparison is stale, a person decides"
        )
    diff = _yardstick_diff(settings, run_id, summary.champion_version)
    if diff["changed"]:
        holds.append(f"yardstick changed since champion v{summary.champion_version} was promoted: {diff['summary']}")
    outcome = promotion_outcome(decision.passed, request.policy, holds)
    reasons = [*decision.reasons, *(f"HOLD: {h}" for h in holds)]
    summary_text = ("PASSED: " if decision.passed else "FAILED: ") + "; ".join(reasons)
    verdict = {
        "gate.passed": str(decision.passed).lower(),
        "gate.reasons": summary_text[:4000],
        "gate.holds": "; ".join(holds)[:4000] or "none",
        "gate.yardstick": diff["status"],
    }
    verdict |= {
        f"gate.ci.{name}": f"{i.estimate:+.4f} [{i.low:+.4f}, {i.high:+.4f}] n={i.items}"
        for name, i in decision.intervals.items()
    }
    tag_version(settings, version, {**verdict, "gate.policy": request.policy.value, "gate.status": outcome.status})
    if outcome.promoted:
        promote(settings, version, actor=f"retrain run {run_id} (policy auto)", reason=decision.summary()[:500])
    with _run(settings, run_id=run_id):
        mlflow.log_metrics(
            {**decision.metrics, "gate.passed": float(decision.passed), "gate.promoted": float(outcome.promoted)}
        )
        mlflow.log_dict(
            asdict(decision)
            | {"policy": request.policy.value, "promoted": outcome.promoted, "holds": holds, "version": version},
            "gate/decision.json",
        )
        mlflow.log_dict(diff, "gate/yardstick_diff.json")
        mlflow.log_text(f"{gate_table(decision)}\n\n{outcome.status}: {summary_text}\n", "gate/summary.md")
        _append_gate_to_summary(run_id, gate_table(decision), outcome.status)
        mlflow.set_tags(
            {"gate.status": outcome.status, "gate.holds": verdict["gate.holds"], "gate.yardstick": diff["status"]}
        )
    log.info("gate for version %s: %s (%s)", version, summary_text, outcome.status)
    return replace(decision, reasons=reasons, metrics={**decision.metrics, "promoted": float(outcome.promoted)})


def _append_gate_to_summary(run_id: str, table: str, status: str) -> None:
    """Add the gate's rules and intervals under the evaluation table of the run's `evaluation/summary.md`."""
    from mlflow.exceptions import MlflowException

    import mlflow

    try:
        before = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/summary.md"))
        text = before.read_text()
    except (MlflowException, OSError):  # no evaluation table (a hand-made summary): the gate table stands alone
        text = ""
    mlflow.log_text(f"{text}\n## Gate ({status})\n\n{table}\n", "evaluation/summary.md")


def _yardstick_diff(settings: Settings, run_id: str, champion: str | None) -> dict[str, Any]:
    """How this run's eval + OOD sets differ from the champion's (fail closed: an unknown yardstick is a change)."""
    from mlflow.exceptions import MlflowException

    import mlflow
    from pipelines.behaviour.registry import RUN_TAG, _client

    staged = _staged(settings, run_id)
    new = staged.yardstick_sha256
    if champion is None:
        return {"status": "no champion", "changed": False, "summary": "no champion to compare with", "new": new}
    found = _client(settings).get_model_version(settings.registered_model, champion)
    tags = found.tags
    old = tags.get("data.yardstick_sha256")
    if old == new:
        return {"status": "same", "changed": False, "summary": f"same eval/OOD sets ({new[:12]})", "new": new}
    files: dict[str, Any] = {}
    champion_run = tags.get(RUN_TAG) or tags.get("mlflow.run_id_source") or found.run_id
    for name in YARDSTICK_FILES:
        before: str | None = None
        if champion_run:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=champion_run, artifact_path=f"{YARDSTICK_ARTIFACTS}/{name}"
                )
                before = Path(path).read_text()
            except (MlflowException, OSError) as err:  # the diff is then by hash only; the hold stands regardless
                log.warning("no %s of champion run %s to diff against: %s", name, champion_run, err)
        after = (staged.folder / name).read_text()
        files[name] = {
            "old_sha256": tags.get(f"data.{name.split('.')[0]}_sha256"),
            "new_sha256": staged.files[name],
            **(record_diff(before, after) if before is not None else {"records": "unknown"}),
        }
    changed = [n for n, f in files.items() if f["old_sha256"] != f["new_sha256"]]
    short = ", ".join(_diff_line(n, files[n]) for n in changed) or "champion records no yardstick hash"
    return {"status": "changed", "changed": True, "summary": short, "old": old, "new": new, "files": files}


@dataclass(frozen=True)
class RetrainOutcome:
    """What a whole retraining run produced."""

    run_id: str
    version: str
    decision: PromotionGateDecision
    summary: EvaluationSummary


def _diff_line(name: str, diff: Mapping[str, Any]) -> str:
    if "added" not in diff:
        return f"{name}: differs (records unknown)"
    return f"{name}: +{len(diff['added'])} -{len(diff['removed'])} ~{len(diff['changed'])} records"


def run_retrain(settings: Settings, request: RetrainRequest, tags: Mapping[str, str] | None = None) -> RetrainOutcome:
    """All steps in one process (the CLI path; the DAG runs the same steps as tasks)."""
    from pipelines.behaviour.registry import audit_champion

    audit_champion(settings)
    run_id = validate_data(settings, request, tags)
    version_data(settings, run_id)
    model_uri = train_candidate(settings, request, run_id)
    summary = evaluate_candidate(settings, request, run_id, model_uri)
    version = register_candidate(settings, run_id, model_uri, summary)
    return RetrainOutcome(run_id, version, decide_promotion(settings, request, run_id, version, summary), summary)
