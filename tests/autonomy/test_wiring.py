"""wiring.hooks: the memory bounds an operator sets reach the recorder, the cache writer and the offline side."""

from __future__ import annotations

import argparse

from edgeproxy import config
from edgeproxy.autonomy import wiring


class _Upstream:
    credentials = None
    online = True

    def on_change(self, callback) -> None:
        pass


def test_memory_bounds_reach_the_parts_they_bound(tmp_path):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    cfg = config.load(parser.parse_args(["--cache-dir", str(tmp_path), "--offline-body-cache", str(1 << 20),
                                         "--record-queue", str(2 << 20), "--cache-write-queue", str(3 << 20)]),
                      environ={})
    rec, loc = wiring.hooks(cfg, _Upstream())
    try:
        assert loc.bodies.max_bytes == 1 << 20
        assert rec.max_pending_bytes == 2 << 20
        assert rec.writer.max_pending_bytes == 3 << 20
    finally:
        rec.close()
