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

import os
import select
import time

from cni_plugin import config, durable, errors, jsonio, log, result
from cni_plugin.value import Value

TYPE_CHECKING = False  # typing costs start-up; annotations are strings (PEP 563), so this is enough for checkers
if TYPE_CHECKING:
    from collections.abc import Mapping

# Linux signal numbers (the same on every architecture Kubernetes runs on), without importing signal (and enum).
_SIGKILL, _SIGPIPE, _SIGXFSZ = 9, 13, 25
_CHUNK = 65536


class Reply(Value):
    """ok, result (the parsed stdout on success; None when the command prints nothing), code, msg, details, offline,
    timed_out."""

    _fields = ("ok", "result", "code", "msg", "details", "offline", "timed_out")
    __slots__ = _fields
    _defaults = {"details": "", "offline": False, "timed_out": False}

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
    """(returncode or None on timeout, stdout, stderr); the delegate's whole process group dies on timeout.

    posix_spawn in a new session with three pipes, then one poll loop until both outputs end or the deadline passes.
    (subprocess and the modules it imports cost about as much start-up as the rest of the plugin's work.)
    """
    fds: list[int] = []
    try:
        r0, w0 = os.pipe()
        fds += (r0, w0)
        r1, w1 = os.pipe()
        fds += (r1, w1)
        r2, w2 = os.pipe()
        fds += (r2, w2)
    except OSError as e:
        _close(fds)
        raise errors.DelegateFailed(f"cannot run delegate {exe}: {e.strerror or e}") from e
    # The child gets exactly stdin/stdout/stderr: our own descriptors are close-on-exec (Python's default), and any
    # the runtime let us inherit are closed for it, as subprocess's close_fds did.
    actions = [(os.POSIX_SPAWN_DUP2, r0, 0), (os.POSIX_SPAWN_DUP2, w1, 1), (os.POSIX_SPAWN_DUP2, w2, 2)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited()]
    try:
        # Python ignores SIGPIPE and SIGXFSZ; the delegate gets the defaults back, as subprocess's restore_signals did.
        pid = os.posix_spawn(exe, [exe], dict(env), file_actions=actions, setsid=True,
                             setsigdef=(_SIGPIPE, _SIGXFSZ))
    except OSError as e:
        _close(fds)
        raise errors.DelegateMissing(f"delegate {exe} cannot be executed: {e.strerror or e}") from e
    _close([r0, w1, w2])
    deadline = time.monotonic() + timeout
    out, err, timed_out = _communicate(w0, r1, r2, stdin, deadline)
    if timed_out:
        try:
            os.killpg(pid, _SIGKILL)
        except ProcessLookupError:
            pass
        # Whatever is left in the pipes; something outside its process group may still hold them, so not forever.
        more_out, more_err, _ = _communicate(-1, r1, r2, b"", time.monotonic() + 2)
        out, err = out + more_out, err + more_err
    _close([r1, r2])
    _, status = os.waitpid(pid, 0)
    return (None if timed_out else os.waitstatus_to_exitcode(status)), out, err


def _inherited() -> list[int]:
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    keep = []
    for fd in fds:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    keep.append(fd)
            except OSError:
                pass  # the descriptor listdir itself used, closed by now
    return keep


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _communicate(w0: int, r1: int, r2: int, stdin: bytes, deadline: float) -> tuple[bytes, bytes, bool]:
    """Write stdin to w0 (then close it), read r1 and r2 to their ends; (out, err, deadline passed)."""
    poller = select.poll()
    chunks: dict[int, list[bytes]] = {r1: [], r2: []}
    view = memoryview(stdin)
    if w0 >= 0:
        if view:
            os.set_blocking(w0, False)
            poller.register(w0, select.POLLOUT)
        else:
            os.close(w0)
    open_fds = {r1, r2}
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    writing = w0 >= 0 and bool(view)
    while open_fds or writing:
        left = deadline - time.monotonic()
        if left <= 0:
            if writing:
                os.close(w0)
            return b"".join(chunks[r1]), b"".join(chunks[r2]), True
        for fd, ev in poller.poll(left * 1000):
            if fd == w0 and writing:
                try:
                    view = view[os.write(w0, view[:_CHUNK]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    view = view[:0]  # the delegate stopped reading: its answer says why
                if not view:
                    writing = False
                    poller.unregister(w0)
                    os.close(w0)
            elif fd in open_fds:
                data = os.read(fd, _CHUNK) if ev & (select.POLLIN | select.POLLHUP | select.POLLERR) else b""
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.discard(fd)
                    poller.unregister(fd)
    return b"".join(chunks[r1]), b"".join(chunks[r2]), False


def _probe_reaches(probe: config.Probe) -> bool:
    import socket

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
            parsed = jsonio.loads(out)
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
    rc, out, _ = _exec(exe, {**env, "CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}', timeout)
    try:
        versions = jsonio.loads(out).get("supportedVersions") if rc == 0 else None
    except (ValueError, AttributeError):
        versions = None
    return [v for v in versions if isinstance(v, str)] if isinstance(versions, list) else []


class Delegate:
    """The delegate of one invocation: its executable, environment, policy and version cache."""

    __slots__ = ("cache", "cfg", "env", "exe", "version")

    def __init__(self, cfg: config.Config, path: tuple[str, ...], base_env: Mapping[str, str],
                 cache: str | None = None):
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
            with open(self.cache, "rb") as f:
                saved = jsonio.loads(f.read())
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
        stdin = jsonio.dumps({**conf, "cniVersion": version}).encode()
        code, out, err = _exec(self.exe, env, stdin, self.cfg.delegate_timeout)
        return classify(self.cfg.offline, code, out, err, self.cfg.delegate_timeout)

    def _save_version(self) -> None:
        if self.cache is None:
            return
        try:
            durable.write(self.cache, jsonio.dumps({"for": self._stat_key(), "version": self.version}).encode())
        except OSError as e:
            log.warning("cannot cache the delegate's CNI version: %s", e)
