"""Assistant-only loss: the marked ChatML renders the same text and masks the assistant turns."""

from __future__ import annotations

import pytest

from arena_training.domain.chat_templates import (
    CHATML_TRAINING_TEMPLATE,
    has_generation_markers,
    is_chatml,
    marked_template,
)
from tests.support.tiny_models import CHAT_TEMPLATE, tiny_chat_model

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "2 plus 2 is 4."},
    {"role": "user", "content": "And 3 plus 3?"},
    {"role": "assistant", "content": "6."},
]


def test_chatml_gets_its_marked_version_and_other_templates_none() -> None:
    assert is_chatml(CHAT_TEMPLATE)
    assert marked_template(CHAT_TEMPLATE) == CHATML_TRAINING_TEMPLATE
    assert marked_template(CHATML_TRAINING_TEMPLATE) == CHATML_TRAINING_TEMPLATE
    assert marked_template("{{ messages[0]['content'] }}") is None
    assert marked_template(None) is None
    assert has_generation_markers(CHATML_TRAINING_TEMPLATE)
    assert not has_generation_markers(CHAT_TEMPLATE)


def test_the_marked_template_renders_identically_and_masks_only_assistant_tokens() -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_chat_model()))
    plain = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    marked = tokenizer.apply_chat_template(
        MESSAGES, tokenize=False, chat_template=CHATML_TRAINING_TEMPLATE
    )
    assert marked == plain
    prompt_plain = tokenizer.apply_chat_template(
        MESSAGES[:2], tokenize=False, add_generation_prompt=True
    )
    prompt_marked = tokenizer.apply_chat_template(
        MESSAGES[:2],
        tokenize=False,
        add_generation_prompt=True,
        chat_template=CHATML_TRAINING_TEMPLATE,
    )
    assert prompt_marked == prompt_plain

    encoded = tokenizer.apply_chat_template(
        MESSAGES,
        chat_template=CHATML_TRAINING_TEMPLATE,
        return_assistant_tokens_mask=True,
        return_dict=True,
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    # Both answers and their end-of-turn tokens, nothing of the system or user turns.
    assert trained == "2 plus 2 is 4.<|im_end|>6.<|im_end|>"
