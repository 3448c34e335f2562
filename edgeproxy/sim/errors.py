"""Errors of the simulator: each is a metav1.Status the API server would answer with (apimachinery api/errors)."""

from __future__ import annotations

from typing import Any

from edgeproxy.sim import resources


class ApiError(Exception):
    """A request the simulated API server refuses; `status` is the Status dict to send."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        self.status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": metadata or {},
            "status": "Failure",
            "message": message,
            "reason": reason,
        }
        if details:
            self.status["details"] = details
        self.status["code"] = code


def _details(res: resources.Resource, name: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if res.group:
        d["group"] = res.group
    d["kind"] = res.name
    return d


def _qualified(res: resources.Resource) -> str:
    return f"{res.name}.{res.group}" if res.group else res.name


def not_found(res: resources.Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(res)} "{name}" not found', _details(res, name))


def already_exists(res: resources.Resource, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(res)} "{name}" already exists', _details(res, name))


def conflict(res: resources.Resource, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(res)} "{name}": the object has been modified; please apply '
        "your changes to the latest version and try again",
        _details(res, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(res: resources.Resource, name: str, message: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'{res.kind} "{name}" is invalid: {message}', _details(res, name) | {"kind": res.kind}
    )


def forbidden(res: resources.Resource, user: str, verb: str, namespace: str, why: str) -> ApiError:
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return ApiError(
        403,
        "Forbidden",
        f'{_qualified(res)} is forbidden: User "{user}" cannot {verb} resource "{res.name}" in API group '
        f'"{res.group}" {scope}: {why}',
        {"kind": res.name} | ({"group": res.group} if res.group else {}),
    )


def gone(message: str, metadata: dict[str, Any] | None = None) -> ApiError:
    return ApiError(410, "Expired", message, metadata=metadata)


def too_large(requested: int, current: int) -> ApiError:
    # apiserver pkg/storage/errors.go NewTooLargeResourceVersionError
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
        retry_after=1,
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def not_acceptable(accept: str) -> ApiError:
    return ApiError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: application/json, "
        f"application/yaml, application/vnd.kubernetes.protobuf (asked for {accept!r})",
    )
