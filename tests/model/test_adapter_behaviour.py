"""A briefly trained adapter really changes the model's behaviour on held-out questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import EvalConfig, evaluate_model, forgetting
from pipelines.behaviour.training import TrainConfig, train_adapter
from pipelines.settings import Settings

TRAINING = Path(__file__).resolve().parents[2] / "data" / "training"


@pytest.mark.xfail(
    strict=False,
    reason="issue 4 open: 16 CPU steps on the top 8 layers do not yet teach SmolLM2-135M the house format",
)
def test_trained_adapter_follows_the_house_format_on_held_out_questions(settings: Settings) -> None:
    data = load_training_data(TRAINING)
    base = resolve_base_model(settings)
    tokenizer, model = load_tokenizer(base), load_model(base)
    config = EvalConfig(items=6, max_new_tokens=48)
    before = evaluate_model("base", model, tokenizer, data.eval, data.ood, config)
    result = train_adapter(model, tokenizer, data.train, TrainConfig(steps=16, learning_rate=2e-3))
    after = evaluate_model("candidate", result.model, tokenizer, data.eval, data.ood, config)
    print(f"\nbase {before.metrics()}\ncandidate {after.metrics()}\nloss {result.losses}")
    assert result.losses[-1][1] < result.losses[0][1]
    assert after.format_compliance >= before.format_compliance + 0.5
    assert after.rouge_l > before.rouge_l + 0.05
    assert forgetting(after, before) < 0.10
