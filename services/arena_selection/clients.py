"""Outbound calls: the judge service rates difficulty (Grade RPC), the inference service returns
the answer texts a judged round refers to (GetGenerations RPC)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from arena.judge.v1 import judge_service_pb2, judge_service_pb2_grpc
from arena_core.errors import FailedPreconditionError, UnavailableError
from arena_core.rpc.client import service_channel
from arena_selection.domain.records import Record

ROLE_TO_PROTO = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}


def _fail(service: str, error: grpc.RpcError) -> Exception:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    message = f"{service}: {code.name if code else 'ERROR'}: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnavailableError(message)
    return FailedPreconditionError(message)


class JudgeClient:
    """Rates instructions 0–10 for difficulty with the judge service's Grade RPC."""

    def __init__(self, target: str, concurrency: int = 8) -> None:
        self._channel: aio.Channel | None = None
        self._target = target
        self._concurrency = concurrency

    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = service_channel(self._target)
        return judge_service_pb2_grpc.JudgeServiceStub(self._channel)

    async def rate(self, judge: common_pb2.JudgeSpec, records: Sequence[Record]) -> list[float]:
        stub = self._stub()
        limit = asyncio.Semaphore(self._concurrency)

        async def one(record: Record) -> float:
            item = judge_service_pb2.JudgeItem(prompt_id=record.id, category=record.category or "")
            for message in record.prompt_messages:
                item.prompt.add(role=ROLE_TO_PROTO[message.role], content=message.content)
            async with limit:
                try:
                    response = await stub.Grade(
                        judge_service_pb2.GradeRequest(judge=judge, item=item), timeout=600
                    )
                except grpc.RpcError as error:
                    raise _fail(f"difficulty judge at {self._target}", error) from None
            judgment = response.judgment
            if not judgment.HasField("score_a"):
                raise FailedPreconditionError(
                    f"difficulty judge gave no score for {record.id} "
                    f"(parse status {judgment.parse_status})"
                )
            return float(judgment.score_a)

        return list(await asyncio.gather(*(one(record) for record in records)))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class InferenceClient:
    """Fetches cached answers by generation id."""

    def __init__(self, target: str) -> None:
        self._channel: aio.Channel | None = None
        self._target = target

    async def texts(self, generation_ids: Sequence[str]) -> dict[str, str]:
        if self._channel is None:
            self._channel = service_channel(self._target)
        stub: Any = inference_service_pb2_grpc.InferenceServiceStub(self._channel)
        found: dict[str, str] = {}
        ids = sorted(set(generation_ids))
        for start in range(0, len(ids), 500):
            try:
                response = await stub.GetGenerations(
                    inference_service_pb2.GetGenerationsRequest(
                        generation_ids=ids[start : start + 500]
                    ),
                    timeout=120,
                )
            except grpc.RpcError as error:
                raise _fail(f"inference service at {self._target}", error) from None
            for generation in response.generations:
                if generation.choices:
                    found[generation.generation_id] = generation.choices[0].text
        return found

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
