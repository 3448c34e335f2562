"""Defences against hostile or broken local clients: who may act as the node, bounds on what one request may hold,
and one rate-limited warning line per kind of client error.

- trust.py   who may act as the node (a request with no bearer token goes upstream with the node's identity): a
             client certificate of `system:node:<node>` verified against the cluster CA on the HTTPS listener, or
             anyone on the plain listener when the operator opted in (`--plain-as-node on`)
- limits.py  head size and arrival time, body size and arrival time, idle time, connections per listener; the
             proxy listener's aiohttp server with Status errors for malformed requests
- labels.py  bounded label values (component, resource, verb) for metrics and debug buffers
- warn.py    client errors logged as one WARNING line per kind, rate-limited; tracebacks are for our own bugs

Boundary: no Kubernetes wire decoding (kube/ does it), no upstream I/O. Neighbours: proxy.py and server.py call it.
"""
