"""The pool package's errors."""

from __future__ import annotations


class PoolError(Exception):
    """Base of the pool package's errors."""


class ConfigError(PoolError):
    """A pool setting that cannot work (a pool name that is no Lease name, an address that is no host:port)."""


class LeaseError(PoolError):
    """The API server refused a Lease request for a reason other than a lost race (e.g. 403: no RBAC grant)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
