"""HTTP/2 to the API servers: one multiplexed connection per upstream identity; and from local clients (issue 13).

    session   the pure connection/stream layer over python-hyper's sans-I/O `h2`: stream state, bounded per-stream
              buffering and flow-control window accounting, GOAWAY and PING bookkeeping, its own framing of the hot
              frames (request HEADERS out, DATA and response HEADERS in) beside h2's; bytes in, bytes out, no I/O
    client    the asyncio shell: a TLS connection speaking `session`, and the pool that keeps one connection per
              (server, identity), opens a second only when the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached,
              drains connections on GOAWAY or a credential change, and PINGs idle connections for liveness

    h2conn    python-hyper h2's connection as both sessions use it (pure): hpack's DEBUG logging off, no per-frame
              repr, on the client side the streams the server took kept past a GOAWAY, and the HPACK decoder both
              install (hpack's results, a third of its CPU)

    serversession  the pure server side of a client's connection: request heads and bodies in, responses out (a
              final response's HEADERS and DATA framed here, beside h2), the listener's bounds as HTTP/2 settings and
              checks, rapid-reset accounting
    server    its asyncio shell: the HTTPS listeners' TCP site, which hands a connection whose ALPN chose h2 to a
              Connection (each stream a web.BaseRequest for proxy's handler) and any other to aiohttp's HTTP/1.1

The client side's one user is upstream.py, which falls back to httpclient.py (HTTP/1.1) when ALPN does not choose
h2. Errors are httpclient's (ConnectFailed, Stale, Broken, HeadTimeout), so the failover logic above does not care
which protocol carried a request. The server side's one user is server.py (the HTTPS and in-cluster listeners).
"""
