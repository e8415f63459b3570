"""The edge between gRPC and the domain: errors converted once, internal errors never leaked, RPCs timed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from regionlock.service.errors import InvalidArgument, ServiceError

if TYPE_CHECKING:  # auth imports this module: a supervisor must not import prometheus-client early (workers.py)
    from regionlock.service.server.metrics import Metrics

log = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error; see the server log"


def status_of(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a client sees for an exception: a domain error's own, INTERNAL (logged) for the rest."""
    if isinstance(exc, ServiceError):
        return grpc.StatusCode[exc.code], exc.message
    log.error("%s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def status_message(exc: ServiceError) -> status_pb2.Status:
    """A domain error as a google.rpc.Status, for per-item errors in batches and streams."""
    return status_pb2.Status(code=grpc.StatusCode[exc.code].value[0], message=exc.message)


def call_status(exc: ServiceError) -> status_pb2.Status:
    """A domain error as the google.rpc.Status that ends a call: an InvalidArgument also names its field as a
    google.rpc.BadRequest field violation in `details` (clients read it with grpc_status.rpc_status.from_call)."""
    status = status_message(exc)
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.problem)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


def abort(context: grpc.ServicerContext, exc: ServiceError) -> NoReturn:
    """End the call with a domain error's status: the one place a ServiceError becomes a call's status."""
    if isinstance(exc, InvalidArgument):
        context.abort_with_status(rpc_status.to_status(call_status(exc)))
    context.abort(grpc.StatusCode[exc.code], exc.message)
    raise AssertionError("grpc's abort returned")  # it raises; this tells type checkers


def _abort(metrics: Metrics, context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    """End the call with the status of `exc` (the error path only: the success path builds nothing here)."""
    code, message = status_of(exc, method)
    metrics.rpc_errors.labels(method, code.name).inc()
    if isinstance(exc, ServiceError):
        abort(context, exc)
    context.abort(code, message)


def unary(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a unary handler of a servicer that has `metrics`: time it and convert its errors."""

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return handler(self, request, context)
            except Exception as exc:
                _abort(self.metrics, context, method, exc)
            finally:
                self.metrics.observe_rpc(method, time.perf_counter() - started)

        return call

    return wrap


def _count_client_end(metrics: Metrics, context: grpc.ServicerContext, method: str) -> None:
    remaining = context.time_remaining()
    ended = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    metrics.rpc_errors.labels(method, ended).inc()
    log.debug("%s ended from the client's side: %s", method, ended)


def streaming(method: str) -> Callable[[Callable[..., Iterator[Any]]], Callable[..., Iterator[Any]]]:
    """Wrap a response-streaming handler of a servicer that has `metrics`: convert its errors.

    A call that ends from outside (the client cancelled, its deadline passed, the server is stopping) is an
    ordinary end for a long-lived stream: counted by that cause, not logged as a failure of ours, and nothing
    is sent. grpcio shows it either way: the request iterator raises a bare RpcError, or, if the call ended
    while a response was being sent, grpcio stops iterating and the handler is closed (GeneratorExit)."""

    def wrap(handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(handler)
        def call(self: Any, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from handler(self, request_iterator, context)
            except grpc.RpcError:
                _count_client_end(self.metrics, context, method)
            except GeneratorExit:
                _count_client_end(self.metrics, context, method)
                raise
            except Exception as exc:
                _abort(self.metrics, context, method, exc)

        return call

    return wrap
