"""Errors of the wire layer. Each carries the HTTP status and Status reason a server would answer with."""

from __future__ import annotations


class KubeError(Exception):
    """Root of every error the wire layer raises."""

    status: int = 400
    reason: str = "BadRequest"


class DecodeError(KubeError):
    """Bytes that are not what the wire format says they must be (protobuf, JSON, watch frames)."""

    status = 500
    reason = "InternalError"


class InvalidRequest(KubeError):
    """A request whose path or query the API server would reject."""

    status = 400
    reason = "BadRequest"


class InvalidSelector(InvalidRequest):
    """A label or field selector that does not parse."""


class UnsupportedField(InvalidSelector):
    """A field selector on a field the resource does not support ("field label not supported: X")."""


class NotAcceptable(KubeError):
    """No representation in the Accept header can be produced."""

    status = 406
    reason = "NotAcceptable"


class InvalidOptions(InvalidRequest):
    """List/watch options the API server rejects as a whole, 422 Invalid with field causes (ValidateListOptions:
    resourceVersionMatch without resourceVersion or with continue, Exact with "0", sendInitialEvents misuse).
    `causes` are {reason, message, field} as metav1.StatusCause writes them."""

    status = 422
    reason = "Invalid"

    def __init__(self, message: str, causes: list[dict[str, str]], kind: str = "ListOptions",
                 group: str = "meta.k8s.io") -> None:
        super().__init__(message)
        self.causes = causes
        self.kind = kind
        self.group = group
