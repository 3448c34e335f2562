"""The companion's errors: one root, leaves named by condition."""

from __future__ import annotations


class CompanionError(Exception):
    """Root of the companion's errors."""


class InvalidAnnotation(CompanionError):
    """A node's autonomy or cache-health annotation that cannot be read; the node is treated as not opted in."""


class ApiError(CompanionError):
    """The API server answered with an error Status (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class BadReview(CompanionError):
    """An AdmissionReview the webhook cannot read (the API server gets a 400)."""
