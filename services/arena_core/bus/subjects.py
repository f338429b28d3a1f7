"""Subjects and streams derived from protobuf message types, never typed by hand.

An event ``arena.<domain>.v1.<Name>`` is published on ``arena.events.<domain>.v1.<Name>`` into the
domain's event stream ``ARENA_EVENTS_<DOMAIN>`` (limits retention: a history any number of
consumers can read). A work item — a message whose name ends in ``Requested`` — goes to
``arena.work.<domain>.v1.<Name>`` in the work-queue stream ``ARENA_WORK_<DOMAIN>``, where each
message is handed to exactly one replica of the consuming service and removed once acknowledged.

A work item may be published to a partition — ``arena.work.inference.v1.GenerationRequested.<key>``
(the key is, for example, the model name) — so that consumers can take only the partitions they
can serve: each replica group of a model server consumes its model's partition alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

WORK_ITEM_SUFFIX = "Requested"
DEAD_LETTER_STREAM = "ARENA_DEAD_LETTERS"
DEAD_LETTER_PREFIX = "arena.dead-letter"

Kind = Literal["events", "work"]


@dataclass(frozen=True)
class MessageRoute:
    """Where a message type lives on the bus."""

    full_name: str
    domain: str
    version: str
    name: str

    @property
    def kind(self) -> Kind:
        return "work" if self.name.endswith(WORK_ITEM_SUFFIX) else "events"

    @property
    def subject(self) -> str:
        return f"arena.{self.kind}.{self.domain}.{self.version}.{self.name}"

    @property
    def stream(self) -> str:
        return stream_name(self.kind, self.domain)

    def partition_subject(self, partition: str) -> str:
        return f"{self.subject}.{partition_token(partition)}"


_TOKEN_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09"}


def partition_token(key: str) -> str:
    """A key (e.g. "llama-3.1-8b") as one subject token: the characters NATS treats as
    separators or wildcards are percent-escaped, so distinct keys stay distinct."""
    if not key:
        raise ValueError("a partition key must not be empty")
    return "".join(_TOKEN_ESCAPES.get(character, character) for character in key)


def route_of(message: type[Message] | Message | Descriptor) -> MessageRoute:
    descriptor = message if isinstance(message, Descriptor) else message.DESCRIPTOR
    parts = descriptor.full_name.split(".")
    if len(parts) != 4 or parts[0] != "arena":
        raise ValueError(
            f"{descriptor.full_name} is not an arena.<domain>.<version>.<Message> type"
        )
    _, domain, version, name = parts
    return MessageRoute(descriptor.full_name, domain, version, name)


def subject_of(message: type[Message] | Message) -> str:
    return route_of(message).subject


def stream_name(kind: Kind, domain: str) -> str:
    return f"ARENA_{kind.upper()}_{domain.upper()}"


def stream_subjects(kind: Kind, domain: str) -> list[str]:
    return [f"arena.{kind}.{domain}.>"]


def dead_letter_subject(consumer: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{consumer}"
