"""The judge service for real (gRPC, JetStream work queue and KV, events) against a scripted
judge model served over the InferenceService contract."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import click
import grpc
import nats
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from arena.common.v1 import common_pb2
from arena.judge.v1 import events_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_cli import judge_commands
from arena_core.bus.events import EventPublisher, stable_event_id
from arena_core.bus.topology import stream_for
from tests.integration.judge.support import (
    first_position_judge,
    garbage_first_judge,
    garbage_judge,
    judge_events,
    judge_settings,
    paper_judge,
    running_judge,
    scripted_inference,
)
from tests.unit.judge.datasets import FASTCHAT_PROMPTS, LLMBAR

USER = common_pb2.ROLE_USER


def item(index: int, good: str = "a", **fields: Any) -> pb.JudgeItem:
    answers = {"a": "a good answer", "b": "a weak answer"}
    if good == "b":
        answers = {"a": "a weak answer", "b": "a good answer"}
    return pb.JudgeItem(
        battle_id=f"battle-{index}",
        prompt_id=f"q{index}",
        prompt=[common_pb2.ChatMessage(role=USER, content=f"Question number {index}?")],
        a=pb.Candidate(model="model-a", text=f"{answers['a']} #{index}"),
        b=pb.Candidate(model="model-b", text=f"{answers['b']} #{index}"),
        **fields,
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def next_event(queue: asyncio.Queue[Any], kind: str, timeout: float = 20) -> Any:
    async def wait() -> Any:
        while True:
            message = await queue.get()
            if message.subject.endswith(kind):
                return message

    return await asyncio.wait_for(wait(), timeout)


async def test_pair_is_judged_in_both_orders_and_then_served_from_the_cache(nats_url: str) -> None:
    async with (
        scripted_inference() as (model, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        request = pb.JudgePairRequest(
            judge=paper_judge(),
            item=item(1),
            aggregation=pb.POSITION_AGGREGATION_MEAN_SCORE,
        )
        first = await judge.stub.JudgePair(request)

        assert [j.order for j in first.judgments] == [pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA]
        for judgment in first.judgments:
            assert judgment.verdict == pb.VERDICT_A_BETTER  # mirrored back for BA
            assert (judgment.score_a, judgment.score_b) == (8, 3)
            assert judgment.parse_status == pb.PARSE_STATUS_OK
            assert judgment.judge.name == "paper"
            assert judgment.judge.version == "1"
            assert not judgment.cached
            assert judgment.style_a.characters == len("a good answer #1")
            assert "Scores: [[A=" in judgment.raw_output
        assert first.outcome.verdict == pb.VERDICT_A_BETTER
        assert (first.outcome.mean_score_a, first.outcome.mean_score_b) == (8, 3)
        assert first.outcome.position_consistent
        assert len(model.inputs) == 2
        # One call showed A first, the other (BA) showed B first.
        firsts = sorted(
            "weak" if (m := i.messages[-1].content).index("weak") < m.index("good") else "good"
            for i in model.inputs
        )
        assert firsts == ["good", "weak"]

        hits = metric("arena_judge_cache_hits_total")
        again = await judge.stub.JudgePair(request)
        assert all(j.cached for j in again.judgments)
        assert [j.judgment_id for j in again.judgments] == [j.judgment_id for j in first.judgments]
        assert len(model.inputs) == 2  # re-judging the same pair costs nothing
        assert metric("arena_judge_cache_hits_total") == hits + 2

        stored = await judge.stub.GetJudgment(
            pb.GetJudgmentRequest(judgment_id=first.judgments[0].judgment_id)
        )
        assert stored.judgment.verdict == pb.VERDICT_A_BETTER


async def test_a_batch_costs_one_call_per_order_per_pair_even_across_a_restart(
    nats_url: str,
) -> None:
    items = [item(i, good="ab"[i % 2]) for i in range(6)]
    duplicate = pb.JudgeItem()
    duplicate.CopyFrom(items[0])
    duplicate.battle_id = "battle-0-again"
    request = pb.JudgeBatchRequest(
        judge=paper_judge(), items=[*items, duplicate], max_concurrency=8
    )
    async with scripted_inference() as (model, target):
        settings = judge_settings(nats_url, target, batch_size=4)
        async with running_judge(settings) as judge:
            response = await judge.stub.JudgeBatch(request)
        assert len(model.inputs) == 12  # 6 distinct pairs x 2 orders; the duplicate rode along
        assert len(model.batch_sizes) < 12
        assert max(model.batch_sizes) <= 4
        assert [r.index for r in response.results] == list(range(7))
        for index, result in enumerate(response.results):
            expected = pb.VERDICT_A_BETTER if index % 2 == 0 else pb.VERDICT_B_BETTER
            assert result.outcome.position_consistent
            assert [j.verdict for j in result.judgments] == [expected, expected]
        assert response.results[6].judgments[0].battle_id == "battle-0-again"

        async with running_judge(settings) as judge:  # a fresh process, the same KV
            again = await judge.stub.JudgeBatch(request)
        assert len(model.inputs) == 12
        assert all(j.cached for r in again.results for j in r.judgments)


async def test_unparsable_output_is_resampled_with_a_new_seed(nats_url: str) -> None:
    async with (
        scripted_inference(garbage_first_judge) as (model, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        response = await judge.stub.JudgePair(
            pb.JudgePairRequest(judge=paper_judge(), item=item(2))
        )
    assert [j.attempts for j in response.judgments] == [2, 2]
    assert all(j.parse_status == pb.PARSE_STATUS_OK for j in response.judgments)
    retries = [i for i in model.inputs if i.sampling.HasField("seed")]
    assert len(retries) == 2
    assert all(
        i.sampling.seed == 1 and i.sampling.temperature == pytest.approx(0.7) for i in retries
    )
    assert response.judgments[0].usage.prompt_tokens > 0


async def test_output_that_never_parses_is_recorded_as_failed_with_its_raw_text(
    nats_url: str,
) -> None:
    spec = paper_judge(name="garbled", max_parse_retries=1)
    before = metric("arena_judge_parse_failures_total", judge="garbled@1")
    async with (
        scripted_inference(garbage_judge) as (model, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        response = await judge.stub.JudgePair(
            pb.JudgePairRequest(judge=spec, item=item(3), orders=[pb.JUDGE_ORDER_AB])
        )
    (judgment,) = response.judgments
    assert judgment.parse_status == pb.PARSE_STATUS_FAILED
    assert judgment.verdict == pb.VERDICT_UNSPECIFIED
    assert judgment.raw_output == "ĊĠ lorem ipsum ĊĊ"
    assert judgment.attempts == 2
    assert not judgment.HasField("score_a")
    assert not response.outcome.HasField("position_consistent")
    assert len(model.inputs) == 2
    assert metric("arena_judge_parse_failures_total", judge="garbled@1") == before + 1


async def test_work_queue_judgments_become_events_and_duplicates_hit_the_cache(
    nats_url: str,
) -> None:
    async with scripted_inference() as (model, target):
        good = model.add_answer("model-a", "a good answer from the queue")
        weak = model.add_answer("model-b", "a weak answer from the queue")
        async with (
            running_judge(judge_settings(nats_url, target)),
            judge_events(nats_url) as events,
        ):
            client = await nats.connect(nats_url)
            js = client.jetstream()
            await js.purge_stream(stream_for("work", "judge").name)
            publisher = EventPublisher(js, "test")
            queued = item(4)
            queued.a.generation_id = good
            queued.b.generation_id = weak
            task = pb.JudgmentTask(judge=paper_judge(), item=queued, order=pb.JUDGE_ORDER_BA)
            task.context.run_id = "run-7"
            task.context.labels["round"] = "r1"
            request = events_pb2.JudgmentRequested(task=task)
            await publisher.publish(request, correlation_id="corr-1")

            message = await next_event(events, "JudgmentCompleted")
            completed = events_pb2.JudgmentCompleted.FromString(message.data)
            cause = request.metadata.event_id
            assert completed.metadata.event_id == stable_event_id(
                "arena.judge.v1", "JudgmentCompleted", cause
            )
            assert completed.metadata.causation_id == cause
            assert completed.metadata.correlation_id == "corr-1"
            judgment = completed.judgment
            assert judgment.context.run_id == "run-7"
            assert judgment.context.labels["round"] == "r1"
            assert (judgment.generation_id_a, judgment.generation_id_b) == (good, weak)
            assert judgment.verdict == pb.VERDICT_A_BETTER
            assert not judgment.cached
            assert judgment.order == pb.JUDGE_ORDER_BA
            assert len(model.inputs) == 1

            duplicate = events_pb2.JudgmentRequested(task=task)
            await publisher.publish(duplicate)
            again = events_pb2.JudgmentCompleted.FromString(
                (await next_event(events, "JudgmentCompleted")).data
            )
            assert again.judgment.cached
            assert again.judgment.judgment_id == judgment.judgment_id
            assert len(model.inputs) == 1

            missing = pb.JudgmentTask()
            missing.CopyFrom(task)
            missing.item.b.generation_id = "no-such-generation"
            await publisher.publish(events_pb2.JudgmentRequested(task=missing))
            failed = events_pb2.JudgmentFailed.FromString(
                (await next_event(events, "JudgmentFailed")).data
            )
            assert failed.error.failure.reason == "ANSWER_NOT_FOUND"
            assert "no-such-generation" in failed.error.failure.message
            assert not failed.error.failure.retryable
            assert failed.error.context.run_id == "run-7"

            batch = events_pb2.JudgmentBatchRequested(
                tasks=[
                    pb.JudgmentTask(judge=paper_judge(), item=item(5), order=order)
                    for order in (pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA)
                ]
            )
            await publisher.publish(batch)
            done = events_pb2.JudgmentBatchCompleted.FromString(
                (await next_event(events, "JudgmentBatchCompleted")).data
            )
            assert [j.order for j in done.judgments] == [pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA]
            assert not done.errors
            await client.drain()


async def test_an_overloaded_inference_service_is_retried_then_reported(nats_url: str) -> None:
    async with (
        scripted_inference() as (model, target),
        running_judge(judge_settings(nats_url, target)),
        judge_events(nats_url) as events,
    ):
        model.down = True
        client = await nats.connect(nats_url)
        js = client.jetstream()
        await js.purge_stream(stream_for("work", "judge").name)
        request = events_pb2.JudgmentRequested(
            task=pb.JudgmentTask(judge=paper_judge(), item=item(6), order=pb.JUDGE_ORDER_AB)
        )
        await EventPublisher(js, "test").publish(request)
        failed = events_pb2.JudgmentFailed.FromString(
            (await next_event(events, "JudgmentFailed")).data
        )
        assert failed.error.failure.retryable
        assert "overload" in failed.error.failure.message
        await client.drain()


async def test_bad_requests_name_the_field(nats_url: str) -> None:
    async with (
        scripted_inference() as (_, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        stub = judge.stub
        cases = [
            (pb.JudgePairRequest(judge=paper_judge(version=""), item=item(7)), "judge.version"),
            (pb.JudgePairRequest(judge=paper_judge(), item=pb.JudgeItem(a=item(7).a)), "item.b"),
            (pb.JudgePairRequest(judge=paper_judge(), item=item(7), orders=[9]), "orders"),
        ]
        for request, where in cases:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.JudgePair(request)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert where in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Grade(pb.GradeRequest(judge=paper_judge(), item=item(7)))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetJudgment(pb.GetJudgmentRequest(judgment_id="f" * 64))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.JudgePair(
                pb.JudgePairRequest(judge=paper_judge(template_id="no-such-template"), item=item(7))
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        await stub.JudgePair(pb.JudgePairRequest(judge=paper_judge(name="fixed"), item=item(8)))
        changed = paper_judge(name="fixed", max_parse_retries=0)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.JudgePair(pb.JudgePairRequest(judge=changed, item=item(8)))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "new version" in (raised.value.details() or "")


async def test_reference_judge_scores_and_rewards_without_a_model(nats_url: str) -> None:
    judge_spec = common_pb2.JudgeSpec(
        name="exact-answer",
        version="1",
        protocol=common_pb2.JUDGE_PROTOCOL_REFERENCE,
        reference_match=common_pb2.REFERENCE_MATCH_NUMERIC,
    )
    prompt = [common_pb2.ChatMessage(role=USER, content="What is 6 x 7?")]
    async with (
        scripted_inference() as (model, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        scored = await judge.stub.Score(
            pb.ScoreRequest(
                judge=judge_spec,
                items=[
                    pb.ScoreItem(prompt=prompt, response="6 x 7 = 42", reference_answer="42"),
                    pb.ScoreItem(prompt=prompt, response="It is 41.", reference_answer="42"),
                ],
            )
        )
        assert [r.reward for r in scored.results] == [1.0, -1.0]
        assert [r.score for r in scored.results] == [10, 1]
        graded = await judge.stub.Grade(
            pb.GradeRequest(
                judge=judge_spec,
                item=pb.JudgeItem(prompt=prompt, a=pb.Candidate(text="42"), reference_answer="42"),
            )
        )
        assert graded.judgment.score_a == 10
        pair = await judge.stub.JudgePair(
            pb.JudgePairRequest(
                judge=judge_spec,
                item=pb.JudgeItem(
                    prompt=prompt,
                    a=pb.Candidate(model="x", text="It is 41."),
                    b=pb.Candidate(model="y", text="The answer is 42."),
                    reference_answer="42",
                ),
                aggregation=pb.POSITION_AGGREGATION_BOTH_AGREE,
            )
        )
        assert pair.outcome.verdict == pb.VERDICT_B_BETTER
        assert model.inputs == []


async def test_templates_from_files_are_listed_page_by_page(nats_url: str, tmp_path: Path) -> None:
    shutil.copy(FASTCHAT_PROMPTS, tmp_path / "judge_prompts.jsonl")
    settings = judge_settings(nats_url, "127.0.0.1:1", template_paths=str(tmp_path))
    async with running_judge(settings) as judge:
        seen: list[pb.JudgeTemplate] = []
        token = ""
        while True:
            page = await judge.stub.ListTemplates(
                pb.ListTemplatesRequest(page=common_pb2.PageRequest(page_size=4, page_token=token))
            )
            seen += page.templates
            token = page.page.next_page_token
            if not token:
                break
        by_id = {t.template_id: t for t in seen}
        assert len(by_id) == 15  # 8 FastChat + 7 built-in
        assert by_id["pair-math-v1"].format == pb.TEMPLATE_FORMAT_FASTCHAT_JSONL
        assert by_id["pair-math-v1"].needs_reference
        assert by_id["arena-pairwise-v1"].format == pb.TEMPLATE_FORMAT_BUILTIN
        only = await judge.stub.ListTemplates(
            pb.ListTemplatesRequest(protocol=common_pb2.JUDGE_PROTOCOL_MT_BENCH_SINGLE)
        )
        assert {t.template_id for t in only.templates} >= {"single-v1", "single-grade-v1"}


async def test_quality_report_over_stored_judgments_and_a_gold_set(
    nats_url: str, tmp_path: Path
) -> None:
    gold_dir = tmp_path / "Natural"
    gold_dir.mkdir()
    records = json.loads((LLMBAR / "Natural/dataset.json").read_text())[:4]
    (gold_dir / "dataset.json").write_text(json.dumps(records))
    spec = paper_judge(name="biased")
    before = metric("arena_judge_position_inconsistent_total", judge="biased@1")
    async with (
        scripted_inference(first_position_judge) as (_, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        await judge.stub.JudgeBatch(
            pb.JudgeBatchRequest(judge=spec, items=[item(i) for i in range(10, 14)])
        )
        assert metric("arena_judge_position_inconsistent_total", judge="biased@1") == before + 4
        report = (
            await judge.stub.GetJudgeQuality(
                pb.GetJudgeQualityRequest(
                    judge_name="biased",
                    judge_version="1",
                    gold_sets=[pb.GoldSetSource(gold_set=pb.GOLD_SET_LLMBAR, uri=str(gold_dir))],
                )
            )
        ).report
    # Before the gold set ran: 4 pairs, every one flipped by position.
    assert report.position.valid >= 4
    assert report.position.rate == 1.0
    assert report.position.first_position_preference == 1.0
    assert report.parse.failed == 0
    (gold,) = report.gold
    assert gold.gold_set == pb.GOLD_SET_LLMBAR
    assert gold.n == 4
    assert gold.positional_agreement == 0.0  # the first-shown output always wins
    assert gold.accuracy == 0.5
    assert report.judge.name == "biased"
    assert report.judge.model.name == "judge-llm"


async def test_cli_gold_has_a_running_judge_judge_the_gold_pairs(
    nats_url: str, tmp_path: Path
) -> None:
    gold_dir = tmp_path / "Natural"
    gold_dir.mkdir()
    records = json.loads((LLMBAR / "Natural/dataset.json").read_text())[:3]
    (gold_dir / "dataset.json").write_text(json.dumps(records))
    spec_file = tmp_path / "judge.yaml"
    spec_file.write_text(
        "name: biased-cli\nversion: '1'\nprotocol: JUDGE_PROTOCOL_PAIRWISE_SCORE\n"
        "model: {name: judge-llm}\n"
    )

    @click.group()
    def cli() -> None:
        pass

    judge_commands.register(cli)
    async with (
        scripted_inference(first_position_judge) as (model, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        args = ["judge", "gold", "--gold", "llmbar", str(gold_dir), "--judge", str(spec_file)]
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, [*args, "--service", judge.address]
        )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["judge"] == "biased-cli@1"
    assert row["n"] == 3
    assert row["positional_agreement"] == 0.0
    assert len(model.inputs) == 6


async def test_an_ensemble_names_every_member_judge(nats_url: str) -> None:
    reference = common_pb2.JudgeSpec(
        name="contains-good",
        version="1",
        protocol=common_pb2.JUDGE_PROTOCOL_REFERENCE,
        reference_match=common_pb2.REFERENCE_MATCH_NORMALIZED,
    )
    ensemble = common_pb2.JudgeSpec(
        name="panel",
        version="1",
        protocol=common_pb2.JUDGE_PROTOCOL_ENSEMBLE,
        members=[paper_judge(name="member-1"), paper_judge(name="member-2"), reference],
        ensemble_aggregation=common_pb2.ENSEMBLE_AGGREGATION_MAJORITY,
    )
    pair = item(20, reference_answer="a good answer #20")
    async with (
        scripted_inference() as (model, target),
        running_judge(judge_settings(nats_url, target)) as judge,
    ):
        response = await judge.stub.JudgePair(pb.JudgePairRequest(judge=ensemble, item=pair))
    for judgment in response.judgments:
        assert judgment.judge.name == "panel"
        assert [m.judge.name for m in judgment.members] == ["member-1", "member-2", "contains-good"]
        assert all(m.judgment_id and m.parse_status == pb.PARSE_STATUS_OK for m in judgment.members)
        assert judgment.verdict == pb.VERDICT_A_BETTER
        assert judgment.explanation.startswith("3 of 3 members parsed")
    assert len(model.inputs) == 4  # two model members x two orders; the reference needs none
