"""Contract messages to domain values and back, and the judgment cache key."""

from __future__ import annotations

from collections.abc import Sequence

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_judge.domain.engine import JudgeDefinition
from arena_judge.domain.records import Game
from arena_judge.domain.style import Style
from arena_judge.domain.verdicts import (
    EnsembleAggregation,
    Message,
    Order,
    Outcome,
    ParseStatus,
    Protocol,
    ReferenceMatch,
    Verdict,
)

_ROLES = {
    common_pb2.ROLE_UNSPECIFIED: "user",
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}
_PROTO_ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}

# Bumped if the key's encoding ever changes, so old and new keys never collide.
_KEY_VERSION = "arena.judge.judgment/v1"


def definition_of(
    spec: common_pb2.JudgeSpec, default_retries: int, where: str = "judge"
) -> JudgeDefinition:
    """The domain's view of a JudgeSpec; the spec itself rides along as the model port's handle."""
    if spec.protocol == common_pb2.JUDGE_PROTOCOL_UNSPECIFIED:
        raise InvalidArgumentError("a judge needs a protocol", where=f"{where}.protocol")
    try:
        protocol = Protocol(spec.protocol)
    except ValueError:
        raise InvalidArgumentError(
            f"unknown protocol {spec.protocol}", where=f"{where}.protocol"
        ) from None
    try:
        reference_match = ReferenceMatch(spec.reference_match or ReferenceMatch.NORMALIZED)
        ensemble = EnsembleAggregation(spec.ensemble_aggregation or EnsembleAggregation.MAJORITY)
    except ValueError as error:
        raise InvalidArgumentError(str(error), where=where) from None
    return JudgeDefinition(
        name=spec.name,
        version=spec.version,
        protocol=protocol,
        template_id=spec.template_id,
        model=spec.model.name,
        max_parse_retries=(
            spec.max_parse_retries if spec.HasField("max_parse_retries") else default_retries
        ),
        reference_match=reference_match,
        numeric_tolerance=spec.numeric_tolerance if spec.HasField("numeric_tolerance") else None,
        members=tuple(
            definition_of(member, default_retries, f"{where}.members[{index}]")
            for index, member in enumerate(spec.members)
        ),
        ensemble=ensemble,
        handle=spec,
    )


def messages_of(prompt: Sequence[common_pb2.ChatMessage]) -> tuple[Message, ...]:
    return tuple(Message(_ROLES.get(m.role, "user"), m.content) for m in prompt)


def chat_messages(messages: Sequence[Message]) -> list[common_pb2.ChatMessage]:
    return [
        common_pb2.ChatMessage(
            role=_PROTO_ROLES.get(m.role, common_pb2.ROLE_USER), content=m.content
        )
        for m in messages
    ]


def judgment_id(
    spec: common_pb2.JudgeSpec,
    prompt: Sequence[common_pb2.ChatMessage],
    answer_a: str,
    answer_b: str | None,
    reference: str | None,
    order: Order,
) -> str:
    """SHA-256 over (judge spec, prompt, both answers, reference, order): the cache key."""
    return content_hash(
        _KEY_VERSION,
        spec,
        [[int(m.role), m.content] for m in prompt],
        answer_a,
        answer_b,
        reference,
        int(order),
    )


def style_proto(style: Style) -> common_pb2.StyleFeatures:
    return common_pb2.StyleFeatures(
        tokens=style.tokens,
        characters=style.characters,
        header_count=style.header_count,
        list_count=style.list_count,
        bold_count=style.bold_count,
    )


def outcome_of(judgment: pb.Judgment) -> Outcome:
    """A stored judgment back as a domain outcome, for aggregating orders and ensembles."""
    return Outcome(
        verdict=Verdict(judgment.verdict),
        score_a=judgment.score_a if judgment.HasField("score_a") else None,
        score_b=judgment.score_b if judgment.HasField("score_b") else None,
        explanation=judgment.explanation,
        raw_output=judgment.raw_output,
        parse_status=ParseStatus(judgment.parse_status or ParseStatus.FAILED),
        attempts=judgment.attempts,
        prompt_tokens=judgment.usage.prompt_tokens,
        completion_tokens=judgment.usage.completion_tokens,
        members=tuple(outcome_of(member) for member in judgment.members),
    )


def fill_outcome(judgment: pb.Judgment, outcome: Outcome) -> None:
    judgment.verdict = int(outcome.verdict)  # type: ignore[assignment]
    if outcome.score_a is not None:
        judgment.score_a = outcome.score_a
    if outcome.score_b is not None:
        judgment.score_b = outcome.score_b
    judgment.explanation = outcome.explanation
    judgment.raw_output = outcome.raw_output
    judgment.parse_status = int(outcome.parse_status)  # type: ignore[assignment]
    judgment.attempts = outcome.attempts
    judgment.usage.prompt_tokens = outcome.prompt_tokens
    judgment.usage.completion_tokens = outcome.completion_tokens


def game_of(judgment: pb.Judgment) -> Game:
    """A stored judgment as a game of its pair, for the quality statistics."""
    pair = judgment.battle_id or "|".join(
        (judgment.prompt_id, judgment.model_a, judgment.model_b, judgment.generation_id_a)
    )
    return Game(
        pair_key=pair,
        question_id=judgment.prompt_id,
        model_a=judgment.model_a,
        model_b=judgment.model_b,
        game=judgment.order or Order.AB,
        verdict=Verdict(judgment.verdict),
        category=judgment.category or None,
        source=judgment.judgment_id,
        length_a=judgment.style_a.characters if judgment.HasField("style_a") else None,
        length_b=judgment.style_b.characters if judgment.HasField("style_b") else None,
    )
