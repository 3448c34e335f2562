"""Shared fixtures for the simulator tests: a started Simulator and HTTPS sessions with the admin and node certs."""

from __future__ import annotations

import pathlib

import aiohttp
import pytest

from edgeproxy import sim as sim_pkg

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
async def sim(tmp_path):
    s = sim_pkg.Simulator(pki_dir=tmp_path / "pki", bookmark_interval=60.0, too_large_wait=0.2)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def admin(sim):
    async with aiohttp.ClientSession(base_url=sim.url, connector=aiohttp.TCPConnector(ssl=sim.client_ssl())) as c:
        yield c


@pytest.fixture
async def node(sim):
    conn = aiohttp.TCPConnector(ssl=sim.client_ssl("node"))
    async with aiohttp.ClientSession(base_url=sim.url, connector=conn) as c:
        yield c
