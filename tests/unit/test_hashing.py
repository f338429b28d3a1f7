from __future__ import annotations

from arena.common.v1 import common_pb2
from arena_core.hashing import content_hash


def test_dict_key_order_does_not_change_the_hash() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})


def test_part_boundaries_matter() -> None:
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert content_hash("x", "y") != content_hash("y", "x")


def test_protobuf_messages_hash_by_content_and_type() -> None:
    first = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")
    same = common_pb2.ChatMessage(content="hi", role=common_pb2.ROLE_USER)
    other = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi!")

    assert content_hash(first) == content_hash(same)
    assert content_hash(first) != content_hash(other)
    assert len(content_hash(first)) == 64
