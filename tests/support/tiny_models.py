"""Tiny chat models for tests: random weights, a tokenizer trained on the fly, nothing downloaded.

Two functions are the whole API:

- :func:`tiny_chat_model` — the folder of a saved model, built once per test session (per distinct
  arguments) under a temporary directory and reused by every later call. Use this in tests.
- :func:`build_tiny_chat_model` — writes a fresh model into a folder you choose (for a test that
  needs its own copy, e.g. to train it or to swap checkpoints).

The folder loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
(offline). The model is a Llama-style causal LM (default hidden size 32, 2 layers); the tokenizer is
a byte-level BPE (any Unicode text encodes) with a ChatML chat template, ``<|im_end|>`` as the
end-of-sequence token and ``<|pad|>`` for padding. Weights are random, so generated text is
gibberish, but it is deterministic for a given ``seed``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "build_tiny_chat_model", "tiny_chat_model"]

# ChatML, the template most open chat models use; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]

_CORPUS = [
    "You are a helpful assistant. Answer the question clearly and briefly.",
    "Explain why the sky is blue, step by step, in simple words.",
    "Write a short poem about the sea and the wind at night.",
    "What is the capital of France? The capital of France is Paris.",
    "Solve 12 + 30 and show your work: 12 plus 30 equals 42.",
    "def add(a, b):\n    return a + b  # Python code with numbers 0 1 2 3 4 5 6 7 8 9",
    "user assistant system: the quick brown fox jumps over the lazy dog!",
    "Translate 'good morning' into German, Spanish and Italian, please?",
]

_lock = threading.Lock()
_built: dict[tuple[int, int, int, int, int], Path] = {}
_session_root: Path | None = None


def build_tiny_chat_model(
    folder: Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 384,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Saves a random Llama-style chat model and its tokenizer into `folder`; returns `folder`.

    `max_position_embeddings` is the context length a server will enforce. The same arguments
    always give the same weights and the same tokenizer.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<|unk|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no text is unknown
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        bos_token=None,
        model_max_length=max_position_embeddings,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_chat_model(
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 384,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """The folder of a tiny chat model, built on first use and shared for the rest of the session.

    Treat the folder as read-only: other tests load it too.
    """
    key = (hidden_size, num_layers, vocab_size, max_position_embeddings, seed)
    with _lock:
        if key not in _built:
            folder = _root() / "tiny-{}-{}-{}-{}-{}".format(*key)
            _built[key] = build_tiny_chat_model(
                folder,
                hidden_size=hidden_size,
                num_layers=num_layers,
                vocab_size=vocab_size,
                max_position_embeddings=max_position_embeddings,
                seed=seed,
            )
        return _built[key]


def _root() -> Path:
    global _session_root
    if _session_root is None:
        _session_root = Path(tempfile.mkdtemp(prefix="arena-tiny-models-"))
        atexit.register(shutil.rmtree, _session_root, True)
    return _session_root
