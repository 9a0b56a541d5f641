"""The native data plane, a library of its own: HTTP/2 framed by nghttp2 in C (h2edge.c
for callers, h2tier.c toward tier replicas; their headers are the one source of what
Python calls), the gRPC-over-HTTP/2 rules (wire.py), keepalive, and the Python that owns
the sockets (caller.py, tier.py). It imports nothing else of the router: the router's
adapters (router/edge/native.py, router/backends/tier_native.py) stand on it.
`make native` builds the C (build.py)."""
