"""Load balancing within a tier, with passive health (breaker, latency outliers)."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc

from router import metrics
from router.call import Call
from router.replicas import Replica, ReplicaSet
from router.settings import BreakerSettings
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class Picker(Protocol):
    def pick(self, candidates: Sequence[Replica]) -> Replica: ...


class PowerOfTwoChoices:
    """Two random candidates; the one with the lower peak-EWMA × (outstanding + 1)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[Replica]) -> Replica:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return min(a, b, key=lambda r: r.latency.value * (r.outstanding + 1))


class RoundRobin:
    """The baseline: every candidate in turn, blind to load and latency."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[Replica]) -> Replica:
        return candidates[next(self._counter) % len(candidates)]


def picker(name: str) -> Picker:
    return RoundRobin() if name == "round_robin" else PowerOfTwoChoices()


class Balancer:
    """A tier as one backend: each call goes to one available replica.

    Replicas this call already tried (retries, hedges, resumes) are avoided while
    others are available. Tier faults count against the replica's breaker; a first
    token far slower than its peers' ejects it as a latency outlier.
    """

    def __init__(self, replicas: ReplicaSet, picker: Picker) -> None:
        self.replicas = replicas
        self._picker = picker
        self._settings: BreakerSettings = replicas.breaker_settings

    def _candidates(self, call: Call) -> list[Replica]:
        available = [r for r in self.replicas.replicas if r.available]
        untried = [r for r in available if r.address not in call.tried]
        return untried or available

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        candidates = self._candidates(call)
        if not candidates:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                f"no available {self.replicas.tier} replica "
                f"({len(self.replicas.replicas)} known, all down or ejected)",
            )
        replica = self._picker.pick(candidates)
        replica.breaker.on_pick()
        call.tried.add(replica.address)
        replica.outstanding += 1
        started = time.monotonic()
        verdict = False
        try:
            outlier = False
            stream = replica.backend.generate(call)
            async for first in stream:
                took = time.monotonic() - started
                try:
                    yield first
                finally:
                    # Judged once the first token is on its way: not the caller's time.
                    replica.latency.observe(took)
                    outlier = self._eject_if_outlier(replica)
                async for response in stream:
                    yield response
                break
            if not outlier:  # a slow success must not undo the ejection
                replica.breaker.success()
            verdict = True
        except StatusError as e:
            if e.code == grpc.StatusCode.UNAVAILABLE:  # the tier's fault, not the caller's
                verdict = True
                if replica.breaker.failure():
                    metrics.EJECTIONS.labels(replica.tier, "failures").inc()
            raise
        finally:
            replica.outstanding -= 1
            if not verdict:
                replica.breaker.release_trial()

    def _eject_if_outlier(self, replica: Replica) -> bool:
        s = self._settings
        replicas = self.replicas.replicas
        if replica.latency.samples < s.outlier_min_samples or len(replicas) < 2:
            return False
        peers = [r for r in replicas if r is not replica and r.latency.samples]
        if not peers:
            return False
        ejected = sum(r.breaker.state != "closed" for r in replicas)
        if ejected + 1 > s.max_ejected_fraction * len(replicas):
            return False  # never eject so many that the rest drown
        typical = statistics.median(r.latency.value for r in peers)
        if replica.latency.value <= max(s.outlier_factor * typical, typical + s.outlier_floor_s):
            return False
        replica.breaker.eject()
        metrics.EJECTIONS.labels(replica.tier, "latency").inc()
        return True
