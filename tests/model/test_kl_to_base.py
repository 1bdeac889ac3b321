"""The KL penalty (LORA_KL_WEIGHT) measures the adapter's drift from its base on prompt tokens, and holds it back.

The penalty is estimated from a shortcut (the base pass starts at the lowest adapted layer, from the adapted
pass's own states), so the first test checks it against two full forward passes of the real model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.dataset import TrainingData, load_training_data
from pipelines.behaviour.evaluation import ood_cross_entropy
from pipelines.behaviour.retrain import RetrainRequest
from pipelines.behaviour.training import (
    IGNORE,
    TrainConfig,
    add_lora,
    answer_and_drift,
    collate,
    prompt_positions,
    tokenize_record,
    train_adapter,
)
from pipelines.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(settings: Settings) -> tuple[RetrainRequest, TrainingData, str]:
    request = RetrainRequest.from_settings(settings)
    return request, load_training_data(request.data_dir), resolve_base_model(settings)


def _full_forward_kl(model: Any, batch: dict[str, Any]) -> float:
    """KL(base || adapted), averaged over every position that predicts a prompt token, from whole-model logits."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        adapted = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
        with model.disable_adapter():
            base = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
    per_position = (base.exp() * (base - adapted)).sum(-1)
    # Independently of prompt_positions: position t predicts token t + 1, a prompt token while t + 1 < prompt length.
    values = []
    for row, labels in enumerate(batch["labels"].tolist()):
        prompt_length = next(i for i, label in enumerate(labels) if label != IGNORE)
        values.extend(per_position[row, : prompt_length - 1].tolist())
    return sum(values) / len(values)


def test_prompt_positions_are_the_states_that_predict_prompt_tokens_only() -> None:
    # Row 0: 3 prompt tokens, 2 answer tokens. Row 1: 2 prompt tokens, 1 answer token, 2 padding.
    batch = {
        "labels": torch.tensor([[IGNORE, IGNORE, IGNORE, 7, 8], [IGNORE, IGNORE, 5, IGNORE, IGNORE]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    }
    assert prompt_positions(batch).tolist() == [[0, 0], [0, 1], [1, 0]]


def test_the_penalty_is_the_kl_between_adapter_and_base_on_prompt_tokens(
    setup: tuple[RetrainRequest, TrainingData, str],
) -> None:
    request, data, base = setup
    tokenizer = load_tokenizer(base)
    model = add_lora(load_model(base), request.train)  # top 16 layers: the shortcut skips the lowest 14
    model.eval()
    batch = collate([tokenize_record(tokenizer, r, 384) for r in data.train[:3]], tokenizer.pad_token_id)
    with torch.no_grad():
        _, fresh = answer_and_drift(model, batch, kl_positions=100_000)
    assert fresh is not None and float(fresh) == pytest.approx(0.0, abs=1e-6), "a fresh adapter (B = 0) is the base"

    torch.manual_seed(0)
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0.0, 0.05)
    with torch.no_grad():
        _, drift = answer_and_drift(model, batch, kl_positions=100_000)  # more than there are: every position
    reference = _full_forward_kl(model, batch)
    assert reference > 1e-3, "the perturbed adapter should move the distribution"
    assert drift is not None and float(drift) == pytest.approx(reference, rel=1e-3)


def test_training_with_the_penalty_forgets_less_out_of_domain(setup: tuple[RetrainRequest, TrainingData, str]) -> None:
    """Two short runs alike but for the penalty: the penalised adapter's out-of-domain cross-entropy rises less."""
    request, data, base = setup
    tokenizer = load_tokenizer(base)
    # A deliberately aggressive short run (high learning rate), so that forgetting shows within a few steps.
    config = replace(TrainConfig(), steps=12, batch_size=4, learning_rate=1e-2, top_layers=8, seed=request.train.seed)
    ood = data.ood[:10]
    before = ood_cross_entropy(load_model(base), tokenizer, ood)
    rise = {}
    for weight in (0.0, 4.0):
        result = train_adapter(load_model(base), tokenizer, data.train, replace(config, kl_weight=weight))
        rise[weight] = ood_cross_entropy(result.model, tokenizer, ood) / before - 1
    print(f"out-of-domain cross-entropy rise: {rise}")
    # The precondition keeps the halving below from passing on noise. Measured unpenalised/penalised: +1.4 % / -0.04 %
    # on the 240-record data, +0.63 % / +0.20 % on the shipped 534 records (CI, 2026-11-29).
    assert rise[0.0] > 0.004, f"the unpenalised run should forget measurably: {rise}"
    assert rise[4.0] < 0.5 * rise[0.0], f"the penalty should at least halve the rise: {rise}"
