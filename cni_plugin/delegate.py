"""Run the real IPAM plugin (the delegate) and say whether it answered, refused, or is offline.

Finds the delegate on CNI_PATH, execs it with a deadline (the whole process group is killed when it passes), parses
its CNI JSON, and classifies a failure with the config's `offline` policy: a timeout, an error code in
`offline.codes` or a message matching `offline.msgRegex` is an outage, unless a configured TCP probe reaches the
server (with a probe configured, the probe decides). A delegate that is missing, prints garbage, or refuses for its
own reasons (exhausted, misconfigured) is *not* offline: mistaking those for an outage would serve stale IPs.
A delegate older than the runtime's cniVersion (Debian's host-local 1.1.1 stops at 1.0.0) is spoken to in the
highest version both support, found with its VERSION command and cached beside the records.
No records are touched here. Neighbours: config.py (policy, delegate config), commands.py (the caller).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cni_plugin import config, durable, errors, result

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    result: dict | None  # the parsed stdout on success (None when the command prints nothing)
    code: int | None
    msg: str
    details: str = ""
    offline: bool = False
    timed_out: bool = False

    def error(self, dtype: str) -> errors.IpamError:
        if self.timed_out:
            return errors.DelegateTimeout(f"delegate {dtype} did not answer in time", self.details)
        return errors.DelegateFailed(f"delegate {dtype}: {self.msg}", self.details,
                                     code=self.code if self.code is not None else 999)


def find(dtype: str, path: tuple[str, ...]) -> str:
    for d in path:
        exe = os.path.join(d, dtype)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    raise errors.DelegateMissing(f"delegate plugin {dtype!r} not found on CNI_PATH", ":".join(path))


def _exec(exe: str, env: Mapping[str, str], stdin: bytes, timeout: float) -> tuple[int | None, bytes, bytes]:
    """(returncode or None on timeout, stdout, stderr); the delegate's whole process group dies on timeout."""
    try:
        proc = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(env), start_new_session=True, close_fds=True)
    except OSError as e:
        raise errors.DelegateMissing(f"delegate {exe} cannot be executed: {e.strerror or e}") from e
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            # Something outside its process group still holds the pipes: stop reading, the child itself is dead.
            out, err = b"", b""
            proc.kill()
            proc.wait()
        return None, out, err
    return proc.returncode, out, err


def _probe_reaches(probe: config.Probe) -> bool:
    try:
        with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
            return True
    except OSError:
        return False


def classify(policy: config.Offline, code: int | None, out: bytes, err: bytes, timeout: float) -> Reply:
    """A raw exec outcome → Reply. `code` None means the deadline passed."""
    if code is None:
        offline = policy.on_timeout if policy.probe is None else not _probe_reaches(policy.probe)
        return Reply(False, None, None, "timed out", f"no answer within {timeout:g}s", offline, timed_out=True)
    parsed: object = None
    if out.strip():
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if code == 0:
        if out.strip() and not isinstance(parsed, dict):
            raise errors.DelegateGarbled("delegate printed something that is not CNI JSON", out[:500].decode(
                errors="replace"))
        return Reply(True, parsed if isinstance(parsed, dict) else None, 0, "")
    if isinstance(parsed, dict) and ("code" in parsed or "msg" in parsed):
        ecode = parsed.get("code") if isinstance(parsed.get("code"), int) else None
        msg, details = str(parsed.get("msg", "")), str(parsed.get("details", ""))
    else:
        ecode, msg = None, (out or err).decode(errors="replace").strip()[:500] or f"exit status {code}"
        details = err.decode(errors="replace").strip()[:500]
    offline = (ecode in policy.codes) or bool(policy.msg_regex.search(f"{msg}\n{details}"))
    if policy.probe is not None:
        offline = not _probe_reaches(policy.probe)
    return Reply(False, None, ecode, msg, details, offline)


def _versions(exe: str, env: Mapping[str, str], timeout: float) -> list[str]:
    rc, out, _ = _exec(exe, {**env, "CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": "0.4.0"}).encode(), timeout)
    try:
        versions = json.loads(out).get("supportedVersions") if rc == 0 else None
    except (ValueError, AttributeError):
        versions = None
    return [v for v in versions if isinstance(v, str)] if isinstance(versions, list) else []


class Delegate:
    """The delegate of one invocation: its executable, environment, policy and version cache."""

    __slots__ = ("cache", "cfg", "env", "exe", "version")

    def __init__(self, cfg: config.Config, path: tuple[str, ...], base_env: Mapping[str, str],
                 cache: Path | None = None):
        self.cfg = cfg
        self.exe = find(cfg.delegate_type, path)
        self.env = {k: v for k, v in base_env.items() if not k.startswith("CNI_")}
        self.env["CNI_PATH"] = ":".join(path)
        self.cache = cache
        self.version = cfg.delegate_cni_version or self._cached_version() or cfg.cni_version

    def _stat_key(self) -> list:
        st = os.stat(self.exe)
        return [self.exe, st.st_mtime_ns, st.st_size, self.cfg.cni_version]

    def _cached_version(self) -> str | None:
        if self.cache is None:
            return None
        try:
            saved = json.loads(self.cache.read_bytes())
            return saved["version"] if saved.get("for") == self._stat_key() else None
        except (OSError, ValueError, AttributeError, KeyError):
            return None

    def supported(self) -> list[str]:
        return _versions(self.exe, self.env, self.cfg.delegate_timeout)

    def call(self, command: str, conf: dict, *, container_id: str = "", ifname: str = "", netns: str = "",
             cni_args: str = "") -> Reply:
        """Run `command`; `conf` is the delegate's stdin (its cniVersion is set here)."""
        cni = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
               "CNI_ARGS": cni_args}
        env = {**self.env, **{k: v for k, v in cni.items() if v}}  # unset, not empty, as a runtime passes them
        started = time.monotonic()
        reply = self._run(env, conf, self.version)
        if reply.code == 1 and not self.cfg.delegate_cni_version:
            # The delegate does not speak our version: ask it which it does, retry once, remember the answer.
            common = result.best_common(self.cfg.cni_version, self.supported())
            if common and common != self.version:
                log.info("delegate %s speaks CNI %s, not %s", self.cfg.delegate_type, common, self.version)
                self.version = common
                self._save_version()
                reply = self._run(env, conf, common)
        log.debug("delegate %s %s for %s: ok=%s code=%s offline=%s in %.3fs", self.cfg.delegate_type, command,
                  container_id, reply.ok, reply.code, reply.offline, time.monotonic() - started)
        return reply

    def _run(self, env: dict, conf: dict, version: str) -> Reply:
        stdin = json.dumps({**conf, "cniVersion": version}).encode()
        code, out, err = _exec(self.exe, env, stdin, self.cfg.delegate_timeout)
        return classify(self.cfg.offline, code, out, err, self.cfg.delegate_timeout)

    def _save_version(self) -> None:
        if self.cache is None:
            return
        try:
            durable.write(self.cache, json.dumps({"for": self._stat_key(), "version": self.version}).encode())
        except OSError as e:
            log.warning("cannot cache the delegate's CNI version: %s", e)
