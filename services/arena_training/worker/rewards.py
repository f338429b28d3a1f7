"""The judge as an RL reward: TRL calls `JudgeScoreReward` with a batch of prompts and
completions, and it asks the judge service's ``Score`` RPC for one reward per completion.

The judge maps its score linearly to [-1, 1] and answers ``parse_failure_reward`` for output it
could not parse, so the policy is never rewarded for confusing the judge. Results are cached by
the judge (same prompt, completion and judge spec), so re-scoring after a resume costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2, judge_service_pb2_grpc
from arena_training.domain.recipes import JudgeReward
from arena_training.worker.main import WorkerError

JUDGE_TARGET_ENV = "ARENA_TRAINING_JUDGE_TARGET"

_ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class JudgeScoreReward:
    """A TRL reward function backed by ``JudgeService.Score``."""

    # TRL names a reward function's logged metrics after `__name__`.
    __name__ = "judge"

    def __init__(
        self,
        target: str,
        judge: common_pb2.JudgeSpec,
        *,
        parse_failure_reward: float = -1.0,
        timeout_seconds: float = 300.0,
        attempts: int = 4,
    ) -> None:
        if not target:
            raise WorkerError(
                "JUDGE_UNAVAILABLE", "no judge service address for the RL reward was configured"
            )
        self._channel = grpc.insecure_channel(target)
        self._stub = judge_service_pb2_grpc.JudgeServiceStub(self._channel)
        self._judge = judge
        self._parse_failure_reward = parse_failure_reward
        self._timeout = timeout_seconds
        self._attempts = attempts

    @classmethod
    def from_options(cls, options: JudgeReward) -> JudgeScoreReward:
        import os

        judge = json_format.ParseDict(options.judge, common_pb2.JudgeSpec())
        target = options.target or os.environ.get(JUDGE_TARGET_ENV, "")
        return cls(
            target,
            judge,
            parse_failure_reward=options.parse_failure_reward,
            timeout_seconds=options.timeout_seconds,
        )

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        references = kwargs.get("reference_answer") or [None] * len(prompts)
        items = []
        for prompt, completion, reference in zip(prompts, completions, references, strict=True):
            item = judge_service_pb2.ScoreItem(prompt=_messages(prompt), response=_text(completion))
            if reference:  # the known answer of a verifiable prompt, for a reference judge
                item.reference_answer = str(reference)
            items.append(item)
        request = judge_service_pb2.ScoreRequest(
            judge=self._judge, items=items, parse_failure_reward=self._parse_failure_reward
        )
        response = self._score(request)
        if len(response.results) != len(request.items):
            raise WorkerError(
                "JUDGE_PROTOCOL",
                f"the judge answered {len(response.results)} rewards "
                f"for {len(request.items)} items",
            )
        return [result.reward for result in response.results]

    def _score(self, request: judge_service_pb2.ScoreRequest) -> judge_service_pb2.ScoreResponse:
        delay = 1.0
        for attempt in range(1, self._attempts + 1):
            try:
                response: judge_service_pb2.ScoreResponse = self._stub.Score(
                    request, timeout=self._timeout
                )
                return response
            except grpc.RpcError as error:
                code = error.code()
                if code not in _TRANSIENT or attempt == self._attempts:
                    raise WorkerError(
                        "JUDGE_UNAVAILABLE",
                        f"judge Score failed with {code.name}: {error.details()}",
                        retryable=code in _TRANSIENT,
                    ) from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._channel.close()


def _messages(prompt: Any) -> list[common_pb2.ChatMessage]:
    if isinstance(prompt, str):
        return [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)]
    return [
        common_pb2.ChatMessage(
            role=_ROLES.get(str(message.get("role")), common_pb2.ROLE_USER),
            content=str(message.get("content", "")),
        )
        for message in prompt
    ]


def _text(completion: Any) -> str:
    """A completion's text: TRL passes strings, or one assistant message for chat prompts."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)
