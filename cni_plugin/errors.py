"""The plugin's errors: one root, `IpamError`, carrying the CNI error code and message the runtime is shown.

Codes 0-99 are the CNI spec's well-known ones (SPEC.md "Well-known Error Codes"); 100+ are this plugin's own.
Foreign exceptions (OSError, json, subprocess) are translated at the boundary that meets them, with `raise ... from e`;
main.py prints any IpamError as the spec's error JSON on stdout. Neighbours: everything in cni_plugin raises these.
"""

from __future__ import annotations


class IpamError(Exception):
    """A failure the runtime sees as {"code", "msg", "details"}."""

    code = 999

    def __init__(self, msg: str, details: str = "", *, code: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def as_json(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class IncompatibleVersion(IpamError):
    code = 1


class UnsupportedField(IpamError):
    code = 2


class UnknownContainer(IpamError):
    code = 3


class InvalidEnvironment(IpamError):
    code = 4


class StoreFailure(IpamError):
    """The snapshot store could not be read or written (read-only or full disk, permissions)."""

    code = 5


class DecodeFailure(IpamError):
    code = 6


class InvalidConfig(IpamError):
    code = 7


class TryAgainLater(IpamError):
    """Offline and nothing safe to serve: the runtime retries the sandbox later (spec code 11)."""

    code = 11


class NotAvailable(IpamError):
    """STATUS: the plugin cannot serve ADD now (CNI 1.1.0 code 50)."""

    code = 50


class DelegateFailed(IpamError):
    """The delegate answered with an error that is not an outage; its own code is passed through."""


class DelegateMissing(IpamError):
    """The delegate named in the config is not an executable on CNI_PATH (never an outage)."""

    code = 101


class DelegateTimeout(IpamError):
    """The delegate did not answer within delegateTimeout and the config does not count that as offline."""

    code = 102


class DelegateGarbled(IpamError):
    """The delegate's output was not the CNI JSON it must print."""

    code = 103


class AddressMismatch(IpamError):
    """CHECK: the addresses in prevResult are not the ones recorded for this container."""

    code = 104
