"""Cross-cutting gRPC concerns as server interceptors: request ids and logs, metrics, and the
mapping of domain errors to status codes. Servicers stay free of all three.

Order matters: ``[RequestContextInterceptor, MetricsInterceptor, ErrorMappingInterceptor]`` —
the error mapping is innermost, so metrics and logs see the final status code.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from arena_core import errors, logs
from arena_core.metrics import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_IN_FLIGHT

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
CORRELATION_ID_KEY = "x-correlation-id"

# Most specific first: the first matching class decides the status code.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.ConfigurationError, grpc.StatusCode.FAILED_PRECONDITION),
    # What generated base servicers raise for an RPC the service does not implement.
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Any]


def status_for(error: BaseException) -> grpc.StatusCode | None:
    for error_class, code in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return code
    return None


class _AroundInterceptor(aio.ServerInterceptor, ABC):
    """Runs `around()` as a context around every RPC, unary or streaming."""

    @abstractmethod
    def around(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream), **codec
        )

    def _unary(self, method: str, behavior: Behavior) -> Behavior:
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with self.around(method, context):
                return await behavior(request, context)

        return wrapped

    def _streaming(self, method: str, behavior: Behavior) -> Behavior:
        async def wrapped(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with self.around(method, context):
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:  # a servicer that writes with context.write() and returns None
                    await result

        return wrapped


class RequestContextInterceptor(_AroundInterceptor):
    """Gives every RPC a request id (the caller's `x-request-id` or a new one) for the logs."""

    @contextlib.asynccontextmanager
    async def around(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        metadata = dict(context.invocation_metadata() or ())
        request_token = logs.request_id.set(str(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex))
        correlation_token = logs.correlation_id.set(
            str(metadata[CORRELATION_ID_KEY]) if CORRELATION_ID_KEY in metadata else None
        )
        started = time.perf_counter()
        try:
            yield
        finally:
            code = _current_code(context) or grpc.StatusCode.OK
            level = logging.DEBUG if code == grpc.StatusCode.OK else logging.WARNING
            log.log(
                level,
                "rpc finished",
                extra={
                    "method": method,
                    "code": _code_name(code),
                    "seconds": round(time.perf_counter() - started, 6),
                },
            )
            logs.request_id.reset(request_token)
            logs.correlation_id.reset(correlation_token)


class MetricsInterceptor(_AroundInterceptor):
    """Counts RPCs by method and status code and times them."""

    def __init__(self, service: str) -> None:
        self._service = service

    @contextlib.asynccontextmanager
    async def around(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        in_flight = GRPC_IN_FLIGHT.labels(self._service, method)
        in_flight.inc()
        started = time.perf_counter()
        code: grpc.StatusCode | str = grpc.StatusCode.OK
        try:
            yield
        except BaseException as error:
            code = _current_code(context) or status_for(error) or grpc.StatusCode.UNKNOWN
            raise
        else:
            code = _current_code(context) or grpc.StatusCode.OK
        finally:
            in_flight.dec()
            GRPC_HANDLING_SECONDS.labels(self._service, method).observe(
                time.perf_counter() - started
            )
            GRPC_HANDLED.labels(self._service, method, _code_name(code)).inc()


class ErrorMappingInterceptor(_AroundInterceptor):
    """Turns domain errors into their status codes; anything else is INTERNAL, logged once."""

    @contextlib.asynccontextmanager
    async def around(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        try:
            yield
        except aio.AbortError:
            raise
        except Exception as error:
            code = status_for(error)
            if code is None:
                log.exception("unhandled error in %s", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error (request id {logs.request_id.get()})",
                )
            else:
                await context.abort(code, str(error))


def _current_code(context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    """The code set on the call so far; None (not OK) while nothing has been set."""
    code: grpc.StatusCode | None = context.code()
    return code


def _code_name(code: grpc.StatusCode | str | Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code)
