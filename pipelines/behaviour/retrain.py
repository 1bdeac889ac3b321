"""The retraining job, one function per step: validate, version, train, evaluate, register, decide.

Each step is what one task of `dags/retrain_lora.py` calls (and `pipelines retrain`
chains them). All steps write into one MLflow run, passed between them by id, so
the run shows the validation report, the loss curve, the evaluation table, the
gate verdict and the registered version together.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.behaviour.evaluation import EvalConfig, ModelReport
from pipelines.behaviour.gate import GateDecision, GateThresholds, PromotionPolicy, Scores, decide
from pipelines.behaviour.training import TrainConfig
from pipelines.settings import Settings
from pipelines.tracking import run_link

log = logging.getLogger(__name__)
ROLES = ("base", "candidate", "champion")


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
            seed=int(o.get("seed", settings.seed)),
        )
        evaluation = EvalConfig(
            items=int(o.get("eval_items", settings.eval_items)), max_new_tokens=settings.eval_max_new_tokens
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

    def gate_scores(self, role: str) -> Scores | None:
        s = self.scores.get(role)
        if s is None:
            return None
        return Scores(s["rouge_l"], s["format_compliance"], s["grounding"], s["ood_cross_entropy"])


def _settings_for(settings: Settings, request: RetrainRequest) -> Settings:
    return settings.model_copy(update={"base_model": request.base_model})


def _run(
    settings: Settings, run_id: str | None = None, tags: Mapping[str, str] | None = None, name: str | None = None
) -> Any:
    from pipelines.tracking import tracked_run

    return tracked_run(settings, settings.training_experiment, run_name=name, run_id=run_id, tags=tags)


def validate_data(settings: Settings, request: RetrainRequest, tags: Mapping[str, str] | None = None) -> str:
    """Open the run, log the request, and validate the training data with GX; raises TrainingDataInvalid."""
    import mlflow
    from pipelines.behaviour.base_model import load_tokenizer, resolve_base_model
    from pipelines.behaviour.dataset import load_training_data
    from pipelines.behaviour.validation import DataLimits, TrainingDataInvalid, validate_training_data

    name = f"retrain-{(tags or {}).get('airflow.run_id', 'cli')}"
    with _run(settings, tags=tags, name=name) as run:
        gate = {f"gate.{k}": v for k, v in asdict(request.thresholds).items()}
        mlflow.log_params(
            {
                **request.train.as_params(),
                "eval_items": request.evaluation.items,
                "policy": request.policy.value,
                **gate,
            }
        )
        base = resolve_base_model(_settings_for(settings, request))
        mlflow.set_tags(
            {"base_model.id": base.model_id, "base_model.path": base.path, "base_model.hash": base.weights_hash}
        )
        limits = DataLimits(max_tokens=request.train.max_seq_len, pii_patterns=tuple(settings.pii_patterns))
        report = validate_training_data(load_training_data(request.data_dir), load_tokenizer(base), limits)
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
    """Snapshot the data folder with DVC and tag the run with its hash and the git revision."""
    import mlflow
    from pipelines.versioning import snapshot

    version = snapshot(settings.data_dir)
    with _run(settings, run_id=run_id):
        mlflow.set_tags({"data.dvc_hash": version.dvc_hash, "data.git_revision": version.git_revision})
    return version.dvc_hash


def train_candidate(settings: Settings, request: RetrainRequest, run_id: str) -> str:
    """Train the adapter, log its loss curve and the adapter (no base weights); returns the model URI."""
    import mlflow
    from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
    from pipelines.behaviour.dataset import load_training_data
    from pipelines.behaviour.registry import log_adapter
    from pipelines.behaviour.training import plot_losses, train_adapter
    from pipelines.tracking import git_revision

    base = resolve_base_model(_settings_for(settings, request))
    tokenizer, model = load_tokenizer(base), load_model(base)
    records = load_training_data(request.data_dir).train
    with _run(settings, run_id=run_id):
        mlflow.set_tag("git_revision", git_revision(settings.project_dir))

        def progress(step: int, total: int, loss: float, tokens_per_s: float) -> None:
            mlflow.log_metrics({"train_loss": loss, "train_tokens_per_s": tokens_per_s}, step=step)

        result = train_adapter(model, tokenizer, records, request.train, on_log=progress)
        mlflow.log_metrics({"train_tokens_per_s": result.tokens_per_s, "train_seconds": result.seconds,
                            "train_tokens": result.tokens, "final_train_loss": result.final_loss})  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot_losses(result.losses, Path(tmp) / "loss_curve.png")), "training")
        model_uri = log_adapter(result.model, tokenizer, base.path)
        mlflow.set_tag("candidate.model_uri", model_uri)
    return model_uri


def _reports(settings: Settings, request: RetrainRequest, model_uri: str) -> tuple[list[ModelReport], str | None]:
    from peft import PeftModel

    from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
    from pipelines.behaviour.dataset import load_training_data
    from pipelines.behaviour.evaluation import evaluate_model
    from pipelines.behaviour.registry import CHAMPION, alias_version, download_adapter, version_source

    data = load_training_data(request.data_dir)
    base = resolve_base_model(_settings_for(settings, request))
    tokenizer = load_tokenizer(base)
    model = PeftModel.from_pretrained(
        load_model(base), str(download_adapter(settings, model_uri)), adapter_name="candidate"
    )
    champion = alias_version(settings, CHAMPION)
    if champion is not None:
        model.load_adapter(str(download_adapter(settings, version_source(settings, champion))), adapter_name=CHAMPION)
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
    from pipelines.behaviour.evaluation import forgetting, summary_table

    reports, champion = _reports(settings, request, model_uri)
    by_role = {r.model: r for r in reports}
    with _run(settings, run_id=run_id):
        for report in reports:
            mlflow.log_metrics(report.metrics())
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
    scores = {r.model: {k: v for k, v in asdict(r).items() if isinstance(v, float)} for r in reports}
    return EvaluationSummary(scores, champion)


def register_candidate(settings: Settings, run_id: str, model_uri: str, summary: EvaluationSummary) -> str:
    """Register the adapter as a new version with lineage tags and point `challenger` at it."""
    import mlflow
    from pipelines.behaviour.registry import CHALLENGER, move_alias, register

    run = mlflow.get_run(run_id)
    lineage = {k: v for k, v in run.data.tags.items() if k.startswith(("data.", "base_model.", "airflow.", "git_"))}
    candidate = summary.scores["candidate"]
    tags = {**lineage, "mlflow.run_id_source": run_id, **{f"eval.{k}": f"{v:.4f}" for k, v in candidate.items()}}
    version = register(settings, model_uri, tags)
    move_alias(settings, CHALLENGER, version, actor=f"retrain run {run_id}", reason="new candidate from retraining")
    with _run(settings, run_id=run_id):
        mlflow.set_tags({"registered.version": version, "registered.model": settings.registered_model})
    return version


def decide_promotion(
    settings: Settings, request: RetrainRequest, run_id: str, version: str, summary: EvaluationSummary
) -> GateDecision:
    """Apply the gate; with policy `auto` a passing challenger becomes champion, else the champion stays."""
    import mlflow
    from pipelines.behaviour.registry import promote, tag_version

    candidate, base = summary.gate_scores("candidate"), summary.gate_scores("base")
    assert candidate is not None and base is not None, "evaluation must score base and candidate"
    decision = decide(candidate, base, summary.gate_scores("champion"), request.thresholds)
    promoted = decision.passed and request.policy is PromotionPolicy.AUTO
    status = "promoted" if promoted else ("awaiting approval" if decision.passed else "rejected")
    verdict = {"gate.passed": str(decision.passed).lower(), "gate.reasons": decision.summary()[:4000]}
    tag_version(settings, version, {**verdict, "gate.policy": request.policy.value, "gate.status": status})
    if promoted:
        promote(settings, version, actor=f"retrain run {run_id} (policy auto)", reason=decision.summary()[:500])
    with _run(settings, run_id=run_id):
        mlflow.log_metrics(
            {**decision.metrics, "gate.passed": float(decision.passed), "gate.promoted": float(promoted)}
        )
        mlflow.log_dict(asdict(decision) | {"policy": request.policy.value, "promoted": promoted, "version": version},
                        "gate/decision.json")  # fmt: skip
        mlflow.set_tag(
            "gate.status", "promoted" if promoted else ("awaiting approval" if decision.passed else "rejected")
        )
    log.info("gate for version %s: %s", version, decision.summary())
    return replace(decision, metrics={**decision.metrics, "promoted": float(promoted)})


@dataclass(frozen=True)
class RetrainOutcome:
    """What a whole retraining run produced."""

    run_id: str
    version: str
    decision: GateDecision
    summary: EvaluationSummary


def run_retrain(settings: Settings, request: RetrainRequest, tags: Mapping[str, str] | None = None) -> RetrainOutcome:
    """All steps in one process (the CLI path; the DAG runs the same steps as tasks)."""
    run_id = validate_data(settings, request, tags)
    version_data(settings, run_id)
    model_uri = train_candidate(settings, request, run_id)
    summary = evaluate_candidate(settings, request, run_id, model_uri)
    version = register_candidate(settings, run_id, model_uri, summary)
    return RetrainOutcome(run_id, version, decide_promotion(settings, request, run_id, version, summary), summary)
