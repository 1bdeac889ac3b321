"""The shipped default training configuration really teaches the house format, within the forgetting bound.

This trains SmolLM2-135M-Instruct with the defaults a `retrain_lora` run uses (about 10-15 min on two CPU
cores) and scores base and candidate on the same held-out questions, exactly as the DAG's evaluate task does.
"""

from __future__ import annotations

import pytest

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import load_training_data
from pipelines.behaviour.evaluation import evaluate_model, forgetting
from pipelines.behaviour.retrain import RetrainRequest
from pipelines.behaviour.training import train_adapter
from pipelines.settings import Settings

pytestmark = pytest.mark.slow


def test_default_training_beats_the_base_model_in_domain_and_forgets_little(settings: Settings) -> None:
    request = RetrainRequest.from_settings(settings)
    data = load_training_data(request.data_dir)
    base = resolve_base_model(settings)
    tokenizer, model = load_tokenizer(base), load_model(base)
    before = evaluate_model("base", model, tokenizer, data.eval, data.ood, request.evaluation)
    result = train_adapter(model, tokenizer, data.train, request.train)
    after = evaluate_model("candidate", result.model, tokenizer, data.eval, data.ood, request.evaluation)
    print(f"\nbase {before.metrics()}\ncandidate {after.metrics()}\nloss {result.losses}")
    assert result.losses[-1][1] < result.losses[0][1] / 3
    # The house format is learnt: the base model never writes it.
    assert before.format_compliance == 0.0 and after.format_compliance >= 0.9
    assert after.citation_validity >= 0.9
    # In-domain quality: the gate's own margin over the base model, and then some.
    assert after.rouge_l >= before.rouge_l + 2 * request.thresholds.min_gain_over_base
    # Forgetting: out-of-domain cross-entropy rises by no more than the gate allows (5 %).
    assert forgetting(after, before) <= request.thresholds.max_forgetting
