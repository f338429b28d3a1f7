from __future__ import annotations

import json
import logging

import pytest

from arena.common.v1 import common_pb2
from arena.inference.v1 import events_pb2 as inference_events
from arena.judge.v1 import events_pb2 as judge_events
from arena.rating.v1 import events_pb2 as rating_events
from arena_core import logs
from arena_core.bus.events import metadata_of, stable_event_id
from arena_core.bus.subjects import route_of, subject_of
from arena_core.bus.topology import ConsumerSpec, stream_of
from arena_core.settings import ConsumerSettings


def test_events_and_work_items_get_their_own_subjects_and_streams() -> None:
    completed = route_of(judge_events.JudgmentCompleted)
    requested = route_of(judge_events.JudgmentRequested)

    assert completed.subject == "arena.events.judge.v1.JudgmentCompleted"
    assert completed.stream == "ARENA_EVENTS_JUDGE"
    assert requested.subject == "arena.work.judge.v1.JudgmentRequested"
    assert requested.stream == "ARENA_WORK_JUDGE"
    assert stream_of(judge_events.JudgmentRequested).work_queue
    assert not stream_of(judge_events.JudgmentCompleted).work_queue


def test_subject_of_an_instance_equals_subject_of_its_type() -> None:
    event = rating_events.RatingsPublished()
    assert subject_of(event) == subject_of(rating_events.RatingsPublished)


def test_types_outside_the_arena_namespace_are_refused() -> None:
    from google.protobuf import timestamp_pb2

    with pytest.raises(ValueError, match=r"google\.protobuf\.Timestamp"):
        route_of(timestamp_pb2.Timestamp)


def test_every_event_carries_metadata_first() -> None:
    for module in (inference_events, judge_events, rating_events):
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            first = descriptor.fields_by_number[1]
            assert first.name == "metadata", descriptor.full_name
            assert first.message_type.full_name == "arena.common.v1.EventMetadata"


def test_metadata_of_refuses_a_message_that_is_no_event() -> None:
    with pytest.raises(TypeError, match="ChatMessage"):
        metadata_of(common_pb2.ChatMessage())


def test_consumer_on_types_of_two_streams_is_refused() -> None:
    with pytest.raises(ValueError, match="spans streams"):
        ConsumerSpec.on(
            "mixed",
            [judge_events.JudgmentCompleted, rating_events.RatingsPublished],
            ConsumerSettings(),
        )


def test_partition_keys_become_one_escaped_subject_token() -> None:
    from arena_core.bus.subjects import partition_token

    route = route_of(inference_events.GenerationRequested)
    assert route.partition_subject("llama-3.1-8b") == (
        "arena.work.inference.v1.GenerationRequested.llama-3%2E1-8b"
    )
    assert partition_token("a.b") != partition_token("a%2Eb")
    with pytest.raises(ValueError, match="empty"):
        partition_token("")


def test_partitioned_consumer_takes_only_its_partitions() -> None:
    spec = ConsumerSpec.on(
        "inference-generation-tiny",
        [inference_events.GenerationRequested],
        ConsumerSettings(),
        partitions=["tiny"],
    )
    assert spec.filter_subjects == ["arena.work.inference.v1.GenerationRequested.tiny"]


def test_consumer_filters_exactly_its_types() -> None:
    spec = ConsumerSpec.on(
        "flywheel-judgments",
        [judge_events.JudgmentFailed, judge_events.JudgmentCompleted],
        ConsumerSettings(),
    )
    assert spec.stream == "ARENA_EVENTS_JUDGE"
    assert spec.filter_subjects == [
        "arena.events.judge.v1.JudgmentCompleted",
        "arena.events.judge.v1.JudgmentCompleted.>",
        "arena.events.judge.v1.JudgmentFailed",
        "arena.events.judge.v1.JudgmentFailed.>",
    ]


def test_stable_event_ids_are_deterministic_and_distinct() -> None:
    assert stable_event_id("judgment", "abc") == stable_event_id("judgment", "abc")
    assert stable_event_id("judgment", "abc") != stable_event_id("judgment", "abd")


def test_json_log_lines_carry_request_context_and_extras() -> None:
    formatter = logs.JsonFormatter("judge")
    record = logging.makeLogRecord({"msg": "rpc %s", "args": ("done",), "levelname": "INFO"})
    record.method = "/arena.judge.v1.JudgeService/JudgePair"
    token = logs.request_id.set("req-7")
    try:
        entry = json.loads(formatter.format(record))
    finally:
        logs.request_id.reset(token)

    assert entry["msg"] == "rpc done"
    assert entry["service"] == "judge"
    assert entry["request_id"] == "req-7"
    assert entry["method"] == "/arena.judge.v1.JudgeService/JudgePair"
