"""Tiny chat models for the demo: a character-level tokenizer trained on the fly and a small
Llama-style network with random weights, written to a local folder. Nothing is downloaded.

Every printable ASCII character is one token (no merges), so digits and letters — what the
demo's tasks reverse, sort, count and add — are single tokens and a model of a few hundred
thousand parameters can learn the tasks in a few hundred steps on a CPU. The chat template is
ChatML, which the training service marks for assistant-only loss and the inference service
applies when it generates.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ChatML, as the training service recognises it for assistant-only loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>")
# The chat roles are one token each, which keeps every training sequence a fifth shorter; task
# payloads never contain these words (tasks.py makes sure).
ROLE_WORDS = ("system", "user", "assistant")
# Every character a task or a chat turn can hold: letters, digits, punctuation, space, newline.
ALPHABET = tuple(dict.fromkeys(string.printable.translate({ord(c): None for c in "\t\r\x0b\x0c"})))


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    # Longest prompt plus answer, in tokens (characters): the demo's are under 100.
    max_position_embeddings: int = 256


def build_tokenizer(corpus: Iterable[str]) -> Any:
    """A character-level `PreTrainedTokenizerFast` trained on `corpus`, with ChatML.

    The printable ASCII alphabet is always included, so any task text encodes without unknowns.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<|unk|>"))
    # One piece per character, so no merge can join two digits or letters.
    bpe.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    bpe.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(ALPHABET),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.add_tokens([AddedToken(word, single_word=False, normalized=False) for word in ROLE_WORDS])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        bos_token=None,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_chat_model(
    folder: Path, corpus: Iterable[str], size: ModelSize = ModelSize(), *, seed: int = 0
) -> Path:
    """Writes a random-weight Llama-style chat model and its tokenizer into `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus)
    tokenizer.model_max_length = size.max_position_embeddings
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.hidden_size * 2,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=size.max_position_embeddings,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.do_sample = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
