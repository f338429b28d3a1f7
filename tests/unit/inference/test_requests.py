"""Generation ids, sampling merge rules and style features."""

from __future__ import annotations

from arena_inference.domain.requests import generation_id, prompt_sha256
from arena_inference.domain.style import style_of
from arena_inference.domain.types import (
    BackendKind,
    ChatMessage,
    ModelRef,
    ModelSpec,
    Role,
    Sampling,
)

HELLO = (ChatMessage(Role.USER, "hello"),)


def test_the_generation_id_is_stable_and_sensitive_to_every_part() -> None:
    base = generation_id(ModelRef("m", "r1"), HELLO, Sampling(seed=1))

    assert base == generation_id(ModelRef("m", "r1"), HELLO, Sampling(seed=1))
    assert len(base) == 64
    variants = [
        generation_id(ModelRef("m", "r2"), HELLO, Sampling(seed=1)),
        generation_id(ModelRef("n", "r1"), HELLO, Sampling(seed=1)),
        generation_id(ModelRef("m", "r1", "lora"), HELLO, Sampling(seed=1)),
        generation_id(ModelRef("m", "r1"), (ChatMessage(Role.SYSTEM, "hello"),), Sampling(seed=1)),
        generation_id(ModelRef("m", "r1"), HELLO, Sampling(seed=2)),
        generation_id(ModelRef("m", "r1"), HELLO, Sampling()),
        generation_id(ModelRef("m", "r1"), HELLO, Sampling(seed=1, stop=("x",))),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_prompt_hash_ignores_the_model() -> None:
    assert prompt_sha256(HELLO) == prompt_sha256(list(HELLO))
    assert prompt_sha256(HELLO) != prompt_sha256((ChatMessage(Role.USER, "hello!"),))


def test_merge_fills_only_unset_fields() -> None:
    merged = Sampling(temperature=0.0, stop=("a",)).merged(
        Sampling(temperature=0.7, top_p=0.9, max_tokens=10, stop=("b",))
    )

    assert merged == Sampling(temperature=0.0, top_p=0.9, max_tokens=10, stop=("a",))
    assert Sampling().merged(Sampling(stop=("b",))).stop == ("b",)
    assert Sampling(seed=0).as_dict() == {"seed": 0}


def test_an_unversioned_spec_gets_a_revision_from_its_location() -> None:
    first = ModelSpec("m", BackendKind.TRANSFORMERS, uri="/ckpt/a")
    second = ModelSpec("m", BackendKind.TRANSFORMERS, uri="/ckpt/b")

    assert first.resolved_revision.startswith("loc-")
    assert first.resolved_revision != second.resolved_revision
    assert ModelSpec("m", BackendKind.TRANSFORMERS, uri="/x", revision="v3").resolved_revision == (
        "v3"
    )


def test_style_counts_markdown_outside_code() -> None:
    text = "# Title\n\n- one\n- two\n1. three\n\n**bold** and __also__\n```\n# not a header\n```"

    style = style_of(text)

    assert (style.header_count, style.list_count, style.bold_count) == (1, 3, 2)
    assert style.characters == len(text)
    assert style_of("a b", tokens=7).tokens == 7
