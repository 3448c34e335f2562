"""memory.py: resident memory split by kind, malloc tuned, freed heap handed back."""

from __future__ import annotations

import ctypes
import time

from edgeproxy import memory

STATUS = """Name:\tedgeproxy
VmPeak:\t  400000 kB
VmRSS:\t  150000 kB
RssAnon:\t   90000 kB
RssFile:\t   58000 kB
RssShmem:\t    2000 kB
Threads:\t4
"""


def test_rss_reads_anon_file_and_shmem_apart(tmp_path):
    status = tmp_path / "status"
    status.write_text(STATUS)
    assert memory.rss(str(status)) == {"anon": 90000 * 1024, "file": 58000 * 1024, "shmem": 2000 * 1024}
    assert memory.rss(str(tmp_path / "missing")) == {}
    status.write_text("RssAnon:\tlots kB\n")
    assert memory.rss(str(status)) == {}  # an unreadable figure is no figure, never an exception


def test_rss_of_this_process():
    got = memory.rss()
    assert got["anon"] > 0 and got["file"] > 0


def test_malloc_is_tuned_and_big_frees_are_trimmed_once_per_burst():
    assert memory.tune_malloc()  # glibc (Debian): mallopt takes both settings
    blob = ctypes.create_string_buffer(32 << 20)
    del blob
    assert not memory.trim(1024)  # a small free is not worth walking the heap
    before = memory.trims
    assert memory.trim(32 << 20, delay=0.05) and memory.trim(32 << 20, delay=0.05)  # the second joins the first
    deadline = time.monotonic() + 10
    while memory.trims == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert memory.trims == before + 1
