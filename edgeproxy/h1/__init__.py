"""The HTTP/1.1 client listener's lean lane: plain GETs answered without aiohttp's per-request objects (lane)."""
