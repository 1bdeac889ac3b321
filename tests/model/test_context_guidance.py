"""Context-aware decoding (ANSWER_CONTEXT_GUIDANCE): the context-free prompt is the guidance's unconditional branch."""

from __future__ import annotations

import pytest

from pipelines.behaviour.base_model import load_model, load_tokenizer, resolve_base_model
from pipelines.behaviour.evaluation import generate
from pipelines.behaviour.house_format import ContextChunk, chat_messages
from pipelines.settings import Settings

QUESTION = "How much did Acme's revenue grow in the third quarter?"
CONTEXTS = [ContextChunk(1, "c1", "Acme results", "Acme's revenue grew 17 percent to 4.2 billion euros in Q3.")]


@pytest.fixture(scope="module")
def base(settings: Settings) -> tuple[object, object]:
    resolved = resolve_base_model(settings)
    return load_tokenizer(resolved), load_model(resolved)


def test_guidance_against_the_prompt_itself_is_plain_greedy_decoding(base: tuple[object, object]) -> None:
    """uncond + g * (cond - uncond) == cond when both branches read the same prompt: the negative is that branch."""
    tokenizer, model = base
    prompt = chat_messages(QUESTION, CONTEXTS)
    plain, _, _ = generate(model, tokenizer, [prompt], 24)
    same, _, _ = generate(model, tokenizer, [prompt], 24, guidance=2.0, negatives=[prompt])
    guided, _, _ = generate(model, tokenizer, [prompt], 24, guidance=2.0, negatives=[chat_messages(QUESTION, [])])
    assert same == plain
    assert guided != plain, "guidance against the context-free prompt changed nothing"
