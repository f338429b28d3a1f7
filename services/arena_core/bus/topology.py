"""Streams, durable consumers, KV buckets and object stores, created idempotently at start-up.

Every service declares what it needs; `ensure_*` creates it or brings an existing one in line, so
any replica can start first and restarts change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from arena_core.bus.subjects import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    Kind,
    route_of,
    stream_name,
    stream_subjects,
)
from arena_core.settings import ConsumerSettings, NatsSettings

_STREAM_NAME_IN_USE = 10058


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    work_queue: bool = False
    description: str = ""


def stream_for(kind: Kind, domain: str) -> StreamSpec:
    return StreamSpec(
        name=stream_name(kind, domain),
        subjects=tuple(stream_subjects(kind, domain)),
        work_queue=kind == "work",
        description=f"arena {domain} {'work queue' if kind == 'work' else 'events'}",
    )


def domain_streams(domain: str) -> tuple[StreamSpec, StreamSpec]:
    """The work queue a domain consumes and the event stream it publishes."""
    return stream_for("work", domain), stream_for("events", domain)


def stream_of(message_type: type[Message]) -> StreamSpec:
    route = route_of(message_type)
    return stream_for(route.kind, route.domain)


DEAD_LETTERS = StreamSpec(
    name=DEAD_LETTER_STREAM,
    subjects=(f"{DEAD_LETTER_PREFIX}.>",),
    description="messages no consumer could handle, kept for inspection and replay",
)


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer on one stream, filtered to the message types it handles."""

    durable: str
    stream: str
    message_types: tuple[type[Message], ...]
    policy: ConsumerSettings = field(default_factory=ConsumerSettings)
    # Only these partitions of each type; empty means the type unpartitioned and all partitions.
    partitions: tuple[str, ...] = ()

    @classmethod
    def on(
        cls,
        durable: str,
        message_types: Sequence[type[Message]],
        policy: ConsumerSettings,
        partitions: Sequence[str] = (),
    ) -> ConsumerSpec:
        """A consumer of `message_types`, on the one stream they all belong to."""
        streams = {stream_of(message_type).name for message_type in message_types}
        if len(streams) != 1:
            raise ValueError(f"consumer {durable} spans streams {sorted(streams)}; use one each")
        return cls(durable, streams.pop(), tuple(message_types), policy, tuple(partitions))

    @property
    def filter_subjects(self) -> list[str]:
        subjects: list[str] = []
        for message_type in self.message_types:
            route = route_of(message_type)
            if self.partitions:
                subjects += [route.partition_subject(key) for key in self.partitions]
            else:
                subjects += [route.subject, f"{route.subject}.>"]
        return sorted(subjects)


def _stream_config(spec: StreamSpec, settings: NatsSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=api.RetentionPolicy.WORK_QUEUE if spec.work_queue else api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_seconds,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, settings: NatsSettings) -> None:
    config = _stream_config(spec, settings)
    try:
        await js.add_stream(config)
    except BadRequestError as error:
        if error.err_code != _STREAM_NAME_IN_USE:
            raise
        await js.update_stream(config)


async def ensure_streams(
    js: JetStreamContext, specs: Sequence[StreamSpec], settings: NatsSettings
) -> None:
    for spec in dict.fromkeys(specs):  # de-duplicated, order kept
        await ensure_stream(js, spec, settings)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    policy = spec.policy
    subjects = spec.filter_subjects
    config = api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=policy.ack_wait_seconds,
        # One delivery more than the retry budget: the consumer loop dead-letters a message on
        # that extra delivery, so a message that crashed the process every time is not lost.
        max_deliver=policy.max_deliveries + 1,
        max_ack_pending=policy.max_ack_pending,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
        filter_subjects=subjects if len(subjects) > 1 else None,
    )
    await js.add_consumer(spec.stream, config)


async def ensure_key_value(
    js: JetStreamContext, bucket: str, settings: NatsSettings, history: int = 1
) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except NotFoundError:  # BucketNotFoundError: first start, create it below
        pass
    return await js.create_key_value(
        api.KeyValueConfig(
            bucket=bucket,
            history=history,
            storage=api.StorageType.FILE,
            replicas=settings.stream_replicas,
            # Reads go to any replica's stream directly instead of through a consumer: a third
            # of the server's CPU per get, on the hot paths of caches and results.
            direct=True,
        )
    )


async def ensure_object_store(
    js: JetStreamContext, bucket: str, settings: NatsSettings
) -> ObjectStore:
    try:
        return await js.object_store(bucket)
    except NotFoundError:
        pass
    return await js.create_object_store(
        bucket,
        api.ObjectStoreConfig(
            bucket=bucket, storage=api.StorageType.FILE, replicas=settings.stream_replicas
        ),
    )
