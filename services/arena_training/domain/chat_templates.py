"""Chat templates for assistant-only loss.

TRL computes the loss on assistant turns only when the chat template wraps them in
``{% generation %}`` / ``{% endgeneration %}`` markers. A template that has them is used as is;
TRL ships marked versions of the templates of common model families; and ChatML (the template
most open chat models and this project's tiny test models use) gets the marked version below.
Any other template cannot mark assistant turns, so the loss then covers whole sequences.
"""

from __future__ import annotations

import re

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

# ChatML in the two spellings found in tokenizer configs (string concatenation and inline).
_CHATML_VARIANTS = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
)

# ChatML rendering identical text, with the assistant's answer and its <|im_end|> marked, so the
# model also learns to stop.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def has_generation_markers(template: str) -> bool:
    return _GENERATION_MARKER.search(template) is not None


def _normalized(template: str) -> str:
    return re.sub(r"\s+", "", template)


def is_chatml(template: str) -> bool:
    normalized = _normalized(template)
    return any(normalized == _normalized(variant) for variant in _CHATML_VARIANTS)


def marked_template(template: str | None) -> str | None:
    """A template that marks assistant turns and renders like `template`, if this module has one.

    Returns `template` itself when it is already marked, and None when this module knows no
    marked equivalent (TRL's own list is consulted by the worker after this).
    """
    if not template:
        return None
    if has_generation_markers(template):
        return template
    if is_chatml(template):
        return CHATML_TRAINING_TEMPLATE
    return None
