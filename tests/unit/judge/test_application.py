"""The judge's use cases over memory stores: what a batch costs in cache lookups and spec
registrations, and that position consistency counts each pair once however its orders arrive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from prometheus_client import REGISTRY

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as inference_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_judge.domain.engine import JudgeEngine
from arena_judge.domain.templates import TemplateCatalog
from arena_judge.service import AnswerSource, JudgeApplication
from arena_judge.store import MemoryJudgmentCache, SpecRegistry

ORDERS = (pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA)


class Answers(AnswerSource):
    def __init__(self) -> None:
        self.generations: dict[str, inference_pb2.Generation] = {}

    def add(self, generation_id: str, text: str) -> str:
        generation = inference_pb2.Generation(generation_id=generation_id)
        generation.choices.add(index=0, text=text)
        self.generations[generation_id] = generation
        return generation_id

    async def get_generations(
        self, generation_ids: Sequence[str]
    ) -> tuple[dict[str, inference_pb2.Generation], list[str]]:
        found = {i: self.generations[i] for i in generation_ids if i in self.generations}
        return found, [i for i in generation_ids if i not in found]


class CountingCache(MemoryJudgmentCache):
    """Yields on every call, as a cache across the network does, and counts the lookups."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []

    async def get(self, judgment_id: str) -> pb.Judgment | None:
        self.lookups.append(judgment_id)
        await asyncio.sleep(0)
        return await super().get(judgment_id)

    async def put(self, judgment: pb.Judgment) -> None:
        await asyncio.sleep(0)
        await super().put(judgment)


class CountingSpecs(SpecRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.registrations = 0

    async def register(self, spec: common_pb2.JudgeSpec) -> None:
        self.registrations += 1
        await super().register(spec)


class NoModel:
    async def complete(self, *args: object) -> None:
        raise AssertionError("a reference judge calls no model")


def reference_judge() -> common_pb2.JudgeSpec:
    return common_pb2.JudgeSpec(
        name="exact",
        version=uuid.uuid4().hex[:8],  # its own metric labels in this process
        protocol=common_pb2.JUDGE_PROTOCOL_REFERENCE,
        reference_match=common_pb2.REFERENCE_MATCH_NUMERIC,
    )


def tasks(
    spec: common_pb2.JudgeSpec, answers: Answers, pairs: int, orders: Sequence[int] = ORDERS
) -> list[pb.JudgmentTask]:
    """`pairs` battles, each in `orders`; A answers right, B answers right on even pairs."""
    out = []
    for index in range(pairs):
        item = pb.JudgeItem(
            battle_id=f"battle-{index}",
            prompt=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"{index} + 1?")],
            a=pb.Candidate(model="a", generation_id=answers.add(f"a{index}", f"It is {index + 1}")),
            b=pb.Candidate(model="b", generation_id=answers.add(f"b{index}", f"It is {index % 2}")),
            reference_answer=str(index + 1),
            arena="unit",
        )
        out += [pb.JudgmentTask(judge=spec, item=item, order=order) for order in orders]
    return out


def app(cache: CountingCache, specs: CountingSpecs, answers: Answers) -> JudgeApplication:
    return JudgeApplication(JudgeEngine(TemplateCatalog(), NoModel()), answers, cache, specs)


def pairs_counted(spec: common_pb2.JudgeSpec) -> float:
    labels = {"judge": f"{spec.name}@{spec.version}"}
    return REGISTRY.get_sample_value("arena_judge_position_pairs_total", labels) or 0.0


async def test_a_batch_looks_each_task_up_once_and_registers_its_judge_once() -> None:
    cache, specs, answers = CountingCache(), CountingSpecs(), Answers()
    spec = reference_judge()
    batch = tasks(spec, answers, pairs=4)
    results = await app(cache, specs, answers).judge_tasks(batch)

    assert all(isinstance(r, pb.Judgment) for r in results)
    assert [(r.battle_id, r.order) for r in results] == [(t.item.battle_id, t.order) for t in batch]
    # One lookup per task; none for the other order of a pair judged in the same batch.
    assert sorted(cache.lookups) == sorted(r.judgment_id for r in results)
    assert specs.registrations == 1
    assert pairs_counted(spec) == 4


async def test_orders_judged_apart_count_their_pair_once() -> None:
    cache, answers = CountingCache(), Answers()
    spec = reference_judge()
    judge = app(cache, CountingSpecs(), answers)
    (first,) = await judge.judge_tasks(tasks(spec, answers, 1, [pb.JUDGE_ORDER_AB]))
    assert pairs_counted(spec) == 0  # the other order is not judged yet
    (second,) = await judge.judge_tasks(tasks(spec, answers, 1, [pb.JUDGE_ORDER_BA]))
    assert pairs_counted(spec) == 1  # found in this replica's memory
    assert isinstance(first, pb.Judgment)
    assert isinstance(second, pb.Judgment)

    # Another replica, sharing the cache, judges the same pair again: found in the cache.
    other = app(cache, CountingSpecs(), answers)
    (again,) = await other.judge_tasks(
        tasks(spec, answers, 1, [pb.JUDGE_ORDER_AB]), max_concurrency=1
    )
    assert isinstance(again, pb.Judgment)
    assert again.cached  # served, not judged: nothing more to count
    assert pairs_counted(spec) == 1


async def test_a_second_replica_finds_the_first_order_in_the_shared_cache() -> None:
    cache, answers = CountingCache(), Answers()
    spec = reference_judge()
    await app(cache, CountingSpecs(), answers).judge_tasks(
        tasks(spec, answers, 1, [pb.JUDGE_ORDER_AB])
    )
    lookups = len(cache.lookups)
    await app(cache, CountingSpecs(), answers).judge_tasks(
        tasks(spec, answers, 1, [pb.JUDGE_ORDER_BA])
    )
    assert len(cache.lookups) == lookups + 2  # its own key, then the other order's
    assert pairs_counted(spec) == 1
