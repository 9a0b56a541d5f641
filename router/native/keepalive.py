"""HTTP/2 keepalive, as gRPC's transports keep it, for the native plane's connections
(callers' at the edge, replicas' in the tier client): while calls are open and nothing
was heard from the peer for a while, send a PING; when a timeout more passes in silence,
the peer is gone and the connection is closed. A host that vanished from the network
sends no reset, so without this its calls wait out their deadlines and the connection
stays forever. Idle connections are not pinged (gRPC's servers refuse pings without
calls by default; gRPC's own servers do not ping them either)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# gRPC's defaults: a gRPC server pings its callers after 2 h, and either side waits 20 s
# for the answer. Toward tiers the router pings after 30 s (its grpc.aio channels too).
CALLER_INTERVAL_S, TIER_INTERVAL_S, TIMEOUT_S = 7200.0, 30.0, 20.0


class Keepalive:
    """The keepalive of one connection. Its owner says when it `heard` the peer, and
    `stop`s it when the connection closes."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval_s: float,
        timeout_s: float,
        *,
        calls_open: Callable[[], bool],
        ping: Callable[[], bool],
        close: Callable[[], None],
        peer: str,
    ) -> None:
        self.loop = loop
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.calls_open = calls_open
        self.ping = ping  # sends a PING; False when writing found the connection dead (closed)
        self.close = close
        self.peer = peer  # for the log: "tier", "caller"
        self._heard = False  # anything read since the last tick
        self._ticker: asyncio.TimerHandle | None = None
        self._unanswered: asyncio.TimerHandle | None = None  # a PING's timeout

    def start(self) -> None:
        self._ticker = self.loop.call_later(self.interval_s, self._tick)

    def heard(self) -> None:
        self._heard = True
        if self._unanswered is not None:
            self._unanswered.cancel()
            self._unanswered = None

    def stop(self) -> None:
        for timer in (self._ticker, self._unanswered):
            if timer is not None:
                timer.cancel()
        self._ticker = self._unanswered = None

    def _tick(self) -> None:
        if self.calls_open() and not self._heard and self._unanswered is None:
            if not self.ping():
                return  # the connection is closed, and this stopped with it
            self._unanswered = self.loop.call_later(self.timeout_s, self._silent)
        self._heard = False
        self._ticker = self.loop.call_later(self.interval_s, self._tick)

    def _silent(self) -> None:
        log.warning("%s connection: no keepalive answer in %.0f s; closing it", self.peer, self.timeout_s)
        self.close()
