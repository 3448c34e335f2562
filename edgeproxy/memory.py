"""The process's memory: resident set split into anonymous and file-backed pages, and handing freed heap back.

RssAnon is the proxy's own heap (Python objects, buffers, and what malloc keeps after they are freed); RssFile is
mapped files (the LMDB pages read, shared libraries): the kernel drops those under pressure and reads them again, so
they are reported apart (`/metrics`: edgeproxy_memory_rss_anon_bytes, edgeproxy_memory_rss_file_bytes).
`tune_malloc()` at start: glibc keeps one heap arena per thread that ever allocated (the event loop, the parsing
thread, the cache writer, the executor's workers) and by default raises the size below which freed blocks stay in
the heap as big buffers come and go; fixing the mmap threshold at 1 MiB returns a big list's buffers to the kernel
the moment they are freed, and two arenas bound the free lists kept. `trim()` asks malloc to return free heap pages
(malloc_trim) half a second after a big list was recorded or served, from a timer thread. Both are no-ops off glibc.
Neighbours: metrics (reads `rss`), record and local (call `trim`), server (calls `tune_malloc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc malloc.h
MMAP_THRESHOLD = 1 << 20  # above TLS reads: ssl.read(256 KiB) then shrunk would be 3 syscalls a read
ARENA_MAX = 2
TRIM_AFTER = 8 << 20  # bytes: a list body at least this big freed is worth a trim
TRIM_DELAY = 0.5  # seconds from the first request to the trim: what is freed meanwhile is returned too

_libc: object | None = None
_lock = threading.Lock()
_timer: threading.Timer | None = None
trims = 0  # trims done (tests, /debug)


def _c() -> object | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc or None


def rss(path: str = "/proc/self/status") -> dict[str, int]:
    """{"anon", "file", "shmem"}: resident bytes by kind, from /proc/self/status (empty where there is none)."""
    out: dict[str, int] = {}
    names = {"RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    out[names[key]] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold and bound its arenas (see the module doc); False where that is not glibc."""
    lib = _c()
    if lib is None:
        return False
    ok = lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and lib.mallopt(M_ARENA_MAX, ARENA_MAX) == 1
    if not ok:
        log.warning("memory: mallopt refused the settings; the heap is tuned by glibc's defaults")
    return ok


def trim(freed: int = TRIM_AFTER, delay: float = TRIM_DELAY) -> bool:
    """After `freed` bytes were let go: return free heap pages to the kernel `delay` seconds from now (a burst of
    big lists, and the writer freeing their items a moment later, share one trim). Any thread; False if not worth it
    or not glibc."""
    global _timer
    if freed < TRIM_AFTER or _c() is None:
        return False
    with _lock:
        if _timer is None:
            _timer = threading.Timer(delay, _trim_now)
            _timer.daemon = True
            _timer.start()
    return True


def _trim_now() -> None:
    global _timer, trims
    with _lock:
        _timer = None
    lib = _c()
    if lib is not None:
        lib.malloc_trim(0)
        trims += 1
