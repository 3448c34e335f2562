"""The WAN relay of the real tier, on loopback: forwarding and counting, cut, black hole, restore."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from .procs import wait_for
from .wan import Wan


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def wan() -> Iterator[Wan]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    w = Wan("127.0.0.1", server.server_address).start()
    try:
        yield w
    finally:
        w.stop()
        server.shutdown()
        server.server_close()


def _connect(w: Wan) -> socket.socket:
    s = socket.create_connection(w.address, timeout=5)
    s.settimeout(5)
    return s


def _echo(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_and_counts_connections_and_bytes(wan: Wan) -> None:
    with _connect(wan) as a, _connect(wan) as b:
        assert _echo(a, b"x" * 100_000) == b"x" * 100_000
        assert _echo(b, b"hello") == b"hello"
        st = wan.stats()
        assert st["connections_total"] == 2 and st["connections_open"] == 2
        assert st["bytes_up"] == st["bytes_down"] == 100_005
    wait_for(lambda: wan.stats()["connections_open"] == 0, 10, "closed connections forgotten")


def test_cut_resets_connections_and_refuses_new_ones_until_restored(wan: Wan) -> None:
    a = _connect(wan)
    assert _echo(a, b"1") == b"1"
    wan.cut()
    with pytest.raises(OSError):  # reset (or closed) under the client
        a.sendall(b"2")
        if not a.recv(1):
            raise ConnectionResetError("closed")
    a.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(wan.address, timeout=5).close()
    assert wan.stats()["state"] == "cut" and wan.stats()["connections_open"] == 0
    wan.restore()
    with _connect(wan) as b:
        assert _echo(b, b"3") == b"3"


def test_blackhole_keeps_connections_and_forwards_nothing_until_restored(wan: Wan) -> None:
    a = _connect(wan)
    assert _echo(a, b"1") == b"1"
    wan.blackhole()
    before = wan.stats()
    a.sendall(b"2")
    b = _connect(wan)  # still accepted
    b.sendall(b"3")
    a.settimeout(0.5)
    with pytest.raises(TimeoutError):
        a.recv(1)
    assert wan.stats()["bytes_up"] == before["bytes_up"] and wan.stats()["connections_open"] == 2
    wan.restore()
    a.settimeout(5)
    b.settimeout(5)
    assert a.recv(1) == b"2" and b.recv(1) == b"3"  # held, then delivered
    a.close()
    b.close()
