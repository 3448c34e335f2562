"""The simulator's recorded cluster ships as package data (edgeproxy/sim/recorded/), byte-identical to the
recordings in tests/fixtures it was copied from, and holds every file the simulator reads."""

from edgeproxy.sim import seed
from tests.sim.conftest import FIXTURES


def test_package_copies_are_the_recordings():
    copies = sorted(p for p in seed.fixture_dir().iterdir() if p.name != "README.md")
    assert len(copies) >= 12
    for copy in copies:
        assert copy.read_bytes() == (FIXTURES / copy.name).read_bytes(), copy.name


def test_the_simulator_reads_nothing_from_tests():
    assert "tests" not in seed.fixture_dir().parts[-3:]
    cluster = seed.fixture_cluster()  # every file the seed reads is there
    assert len(cluster["pods"]) == 30 and len(cluster["nodes"]) == 2
