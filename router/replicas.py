"""A tier's replicas: discovery (static or DNS), health watching, per-replica state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from router.backends import TierAdapter, adapter
from router.settings import BreakerSettings, TierSettings
from router.stats import Breaker, PeakEwma

log = logging.getLogger(__name__)
DNS_PREFIX = "dns:///"


class Replica:
    """One endpoint of a tier and what the router knows about it."""

    def __init__(self, tier: str, backend: TierAdapter, breaker: Breaker, initial_latency_s: float):
        self.tier = tier
        self.address = backend.address
        self.backend = backend
        self.breaker = breaker
        self.latency = PeakEwma(initial_latency_s)
        self.outstanding = 0
        # From grpc.health.v1 Watch; optimistic until the first answer.
        self.serving = True

    @property
    def available(self) -> bool:
        return self.serving and self.breaker.allows()

    async def close(self) -> None:
        await self.backend.close()


async def resolve(endpoints: list[str]) -> list[str]:
    """Static host:port entries as they are; `dns:///host:port` looked up (every A/AAAA
    record is a replica, which is how a Kubernetes headless Service is discovered)."""
    loop = asyncio.get_running_loop()
    addresses: list[str] = []
    for endpoint in endpoints:
        if not endpoint.startswith(DNS_PREFIX):
            addresses.append(endpoint)
            continue
        host, _, port = endpoint.removeprefix(DNS_PREFIX).rpartition(":")
        infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        for family, *_, sockaddr in infos:
            ip = str(sockaddr[0])
            address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
            if address not in addresses:
                addresses.append(address)
    return addresses


class ReplicaSet:
    def __init__(
        self,
        tier: str,
        settings: TierSettings,
        breaker: BreakerSettings,
        connect: Callable[[str], TierAdapter] | None = None,
    ) -> None:
        self.tier = tier
        # A replica's adapter, by address (router/app.py chooses the transport).
        self._connect = connect or (lambda address: adapter(tier, address, settings))
        self._settings = settings
        self.breaker_settings = breaker
        self._replicas: dict[str, Replica] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._refresher: asyncio.Task[None] | None = None

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    async def start(self) -> None:
        await self.refresh()
        if any(e.startswith(DNS_PREFIX) for e in self._settings.endpoints):
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def refresh(self) -> None:
        try:
            addresses = await resolve(self._settings.endpoints)
        except OSError as e:
            # A DNS blip must not empty the tier: keep the replicas we have.
            log.warning("resolving %s replicas failed, keeping %d: %s", self.tier, len(self._replicas), e)
            return
        for address in addresses:
            if address not in self._replicas:
                self._add(address)
        for address in [a for a in self._replicas if a not in addresses]:
            await self._remove(address)

    def _add(self, address: str) -> None:
        b = self.breaker_settings
        breaker = Breaker(b.failures_to_open, b.base_ejection_s, b.max_ejection_s)
        backend = self._connect(address)
        replica = Replica(self.tier, backend, breaker, self._settings.expected_ttft_s)
        self._replicas[address] = replica
        if self._settings.health_check:
            self._watchers[address] = asyncio.create_task(self._watch(replica))

    async def _remove(self, address: str) -> None:
        replica = self._replicas.pop(address)
        watcher = self._watchers.pop(address, None)
        if watcher is not None:
            watcher.cancel()
        await replica.close()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.resolve_interval_s)
            await self.refresh()

    async def _watch(self, replica: Replica) -> None:
        async for serving in replica.backend.health():
            replica.serving = serving

    async def close(self) -> None:
        tasks = [*self._watchers.values(), *([self._refresher] if self._refresher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self._replicas.values():
            await replica.close()
