"""sd_notify against a datagram socket the test binds, as systemd does for Type=notify: READY, then WATCHDOG pets."""

import asyncio
import os
import socket

import pytest

from edgeproxy import notify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


async def test_ready_then_watchdog_pets(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=0.2s -> a pet every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.ready("serving on 127.0.0.1:10261")
    first = received(notify_socket)
    assert first["READY"] == "1"
    assert first["MAINPID"] == str(os.getpid())
    assert first["STATUS"] == "serving on 127.0.0.1:10261"
    assert notify.watchdog_interval() == pytest.approx(0.1)
    task = notify.start_watchdog()
    assert task is not None
    try:
        loop = asyncio.get_running_loop()
        notify_socket.setblocking(False)
        async with asyncio.timeout(10):
            for _ in range(2):  # the loop keeps petting
                assert received_msg(await loop.sock_recv(notify_socket, 4096)) == {"WATCHDOG": "1"}
    finally:
        task.cancel()
    assert notify.stopping("bye")
    notify_socket.setblocking(True)
    assert received(notify_socket) == {"STOPPING": "1", "STATUS": "bye"}


def received_msg(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


async def test_a_failing_check_skips_pets(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    checks = []
    healthy = asyncio.Event()

    def check():
        checks.append(1)
        if len(checks) >= 3:
            healthy.set()
            return True
        return False

    task = notify.start_watchdog(check)
    try:
        loop = asyncio.get_running_loop()
        notify_socket.setblocking(False)
        async with asyncio.timeout(10):
            data = await loop.sock_recv(notify_socket, 4096)
        # nothing was sent while the check failed: the first datagram came after the third check
        assert healthy.is_set() and len(checks) >= 3
        assert received_msg(data) == {"WATCHDOG": "1"}
    finally:
        task.cancel()


def test_abstract_socket_name(monkeypatch):
    name = f"edgeproxy-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(10)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.status("warming up\nthe cache")
        assert received(sock) == {"STATUS": "warming up the cache"}
    finally:
        sock.close()


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert notify.ready() is False
    assert notify.watchdog() is False


def test_watchdog_for_another_process_is_not_ours(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert notify.watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert notify.watchdog_interval() is None


def test_a_gone_listener_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready() is False


@pytest.mark.timeout(60)
async def test_serve_sends_ready_then_watchdog_then_stopping(tmp_path):
    """`edgeproxy serve` as systemd runs it (Type=notify, WatchdogSec): READY once listening, even with the API server
    unreachable (kubelet must start offline too), then WATCHDOG pets, then STOPPING on SIGTERM."""
    import signal
    import sys

    from tests.test_proxy import free_port

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPROXY_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeproxy", "serve", "--kubeconfig", str(kubeconfig),
        "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
        "--cache-dir", str(tmp_path / "cache"), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(30):
            ready = received_msg(await loop.sock_recv(sock, 4096))
            assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
            assert "serving on http://127.0.0.1:" in ready["STATUS"]
            seen = []
            while len(seen) < 2:
                msg = received_msg(await loop.sock_recv(sock, 4096))
                if "WATCHDOG" in msg:
                    seen.append(msg)
            proc.send_signal(signal.SIGTERM)
            while "STOPPING" not in (msg := received_msg(await loop.sock_recv(sock, 4096))):
                pass
            assert msg["STOPPING"] == "1"
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
