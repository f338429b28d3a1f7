"""Event metadata and publishing: every event carries `metadata` first, and its event id is the
JetStream `Nats-Msg-Id`, so a re-publish inside the duplicate window is dropped by the server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message
from nats.js import JetStreamContext

from arena.common.v1.common_pb2 import EventMetadata
from arena_core.bus.subjects import route_of
from arena_core.metrics import EVENTS_PUBLISHED

EVENT_TYPE_HEADER = "Arena-Event-Type"
MSG_ID_HEADER = "Nats-Msg-Id"


EventT = TypeVar("EventT", bound=Message)


def stable_event_id(*parts: str) -> str:
    """A deterministic id for an event that must be published at most once per cause."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)).hex


def metadata_of(event: Message) -> EventMetadata:
    """The `EventMetadata` every event carries as field 1."""
    field = event.DESCRIPTOR.fields_by_number.get(1)
    if field is None or field.name != "metadata" or field.message_type != EventMetadata.DESCRIPTOR:
        raise TypeError(f"{event.DESCRIPTOR.full_name} has no EventMetadata `metadata` field first")
    metadata: EventMetadata = getattr(event, field.name)
    return metadata


class EventPublisher:
    """Publishes events and work items to the stream their type belongs to."""

    def __init__(self, js: JetStreamContext, producer: str) -> None:
        self._js = js
        self._producer = producer

    def stamp(
        self,
        event: EventT,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        caused_by: Message | None = None,
    ) -> EventT:
        """Fills the metadata that is still empty: id, time, producer, correlation and cause."""
        metadata = metadata_of(event)
        if event_id:
            metadata.event_id = event_id
        elif not metadata.event_id:
            metadata.event_id = uuid.uuid4().hex
        occurred_at = metadata.occurred_at
        if not occurred_at.seconds and not occurred_at.nanos:
            occurred_at.FromDatetime(datetime.now(UTC))
        metadata.producer = metadata.producer or self._producer
        if caused_by is not None:
            cause = metadata_of(caused_by)
            metadata.causation_id = metadata.causation_id or cause.event_id
            metadata.correlation_id = metadata.correlation_id or cause.correlation_id
        if correlation_id:
            metadata.correlation_id = correlation_id
        return event

    async def publish(
        self,
        event: Message,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        caused_by: Message | None = None,
        partition: str | None = None,
    ) -> bool:
        """Publishes and waits for JetStream's ack; False when the server dropped a duplicate.

        `partition` routes a work item to the consumers of that partition only (see subjects).
        """
        self.stamp(event, event_id=event_id, correlation_id=correlation_id, caused_by=caused_by)
        route = route_of(event)
        ack = await self._js.publish(
            route.subject if partition is None else route.partition_subject(partition),
            event.SerializeToString(),
            stream=route.stream,
            headers={
                MSG_ID_HEADER: metadata_of(event).event_id,
                EVENT_TYPE_HEADER: route.full_name,
            },
        )
        duplicate = bool(ack.duplicate)
        EVENTS_PUBLISHED.labels(self._producer, route.name, str(duplicate).lower()).inc()
        return not duplicate
