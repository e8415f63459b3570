"""Domain errors of the service; each names the gRPC status code the edge converts it to (no grpc import here)."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client may see: its message is safe to send."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field is malformed; the message names the field (the edge adds it as a BadRequest detail)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(ServiceError):
    """The thing asked for does not exist."""

    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    """The server's state does not allow the request (for example, a reload that failed)."""

    code = "FAILED_PRECONDITION"


class Unavailable(ServiceError):
    """A dependency (the override store) can't be reached now; retrying later may work."""

    code = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    """A limit of this server process is reached (open streams); retrying later or on another connection may work."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(ServiceError):
    """No token, or a token the server doesn't know."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """The token's role may not make this call."""

    code = "PERMISSION_DENIED"
