"""Load balancing within a tier, with passive health (breaker, latency outliers): p2c
over peak-EWMA (the default), round-robin (the baseline), or prefix-affine (a
conversation stays where its prefix is cached: router/affinity.py, with its placement
remembered in router/state/placement.py)."""

from __future__ import annotations

import itertools
import logging
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

import grpc

from router import metrics
from router.affinity import HashRing, affinity_key, bounded_owner, capacity, least_loaded
from router.call import Call
from router.replicas import Replica, ReplicaSet
from router.settings import AffinitySettings, BreakerSettings
from router.state.placement import Placements
from router.state.store import StoreDown
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)


class Picker(Protocol):
    # Whether the balancer may eject a replica whose first tokens are far slower than its
    # peers': only where the picker sends every replica comparable calls.
    ejects_latency_outliers: bool

    def pick(self, call: Call, candidates: Sequence[Replica]) -> Replica: ...


@runtime_checkable
class Recalling(Protocol):
    """A picker whose choice may come from shared state (an await) before `pick`."""

    async def recall(self, call: Call, candidates: Sequence[Replica]) -> Replica | None: ...


class PowerOfTwoChoices:
    """Two random candidates; the one with the lower peak-EWMA × (outstanding + 1)."""

    ejects_latency_outliers = True

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, call: Call, candidates: Sequence[Replica]) -> Replica:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return min(a, b, key=lambda r: r.latency.value * (r.outstanding + 1))


class RoundRobin:
    """The baseline: every candidate in turn, blind to load and latency."""

    ejects_latency_outliers = True

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, call: Call, candidates: Sequence[Replica]) -> Replica:
        return candidates[next(self._counter) % len(candidates)]


class PrefixAffine:
    """The replica that owns the call's affinity key on a hash ring of every known
    replica (router/affinity.py), under a bound on its load. Only candidates are picked
    (available, and not yet tried by this call when others are), so a retry or a hedge
    walks on to the next replica on the ring, and an ejected replica's keys go to their
    next owner and come back when it does."""

    def __init__(self, settings: AffinitySettings, known: Callable[[], Iterable[Replica]]) -> None:
        self._settings = settings
        self._known = known
        self._ring = HashRing(())
        self.ejects_latency_outliers = settings.eject_latency_outliers

    def _current_ring(self) -> HashRing:
        # The ring holds every known replica, up or not: one that is down keeps its
        # place, so its keys return to it, and the others' keys never move.
        members = {r.address for r in self._known()}
        if members != self._ring.members:  # discovery added or removed replicas
            self._ring = HashRing(members, self._settings.virtual_nodes)
        return self._ring

    def pick(self, call: Call, candidates: Sequence[Replica]) -> Replica:
        if len(candidates) == 1:
            return candidates[0]
        key = affinity_key(call, self._settings.leading_tokens)
        loads = {r.address: r.outstanding for r in candidates}
        owner = bounded_owner(self._current_ring(), key, loads, self._settings.load_factor)
        return next(r for r in candidates if r.address == owner)


class RememberedPrefixAffine(PrefixAffine):
    """Prefix-affine, with a conversation's first turn placed where the fewest
    conversations are active instead, and its replica remembered in `placements`
    (`recall`, before `pick`): the ring spreads many keys evenly, but a few conversations
    unevenly, and its bound then moves the overflow turn by turn."""

    def __init__(
        self,
        settings: AffinitySettings,
        known: Callable[[], Iterable[Replica]],
        tier: str,
        placements: Placements,
    ) -> None:
        super().__init__(settings, known)
        self._tier = tier
        self._placements = placements
        self._placing: Counter[str] = Counter()  # per replica: calls whose placement is being written

    async def recall(self, call: Call, candidates: Sequence[Replica]) -> Replica | None:
        """The conversation's replica: where it was placed, while that is a candidate
        within `move_factor` × the mean load; else the candidate holding the fewest
        active conversations (then the least loaded), remembered from now on. None, and
        the ring decides, for a call without a session, a retry or hedge of this call
        (the ring's next replica), a single candidate, or a store that cannot answer."""
        if not call.session_id.strip() or call.tried or len(candidates) < 2:
            return None
        key = affinity_key(call, self._settings.leading_tokens)
        try:
            placed = await self._placements.get(self._tier, key)
        except StoreDown as e:
            log.debug("placement store unavailable, the ring decides: %s", e)
            metrics.SESSION_STORE_ERRORS.labels("placement").inc()
            return None
        # Calls being placed count as load: while one waits for its write, the others
        # must not all see the loads from before it and pick the same replica.
        loads = {r.address: r.outstanding + self._placing[r.address] for r in candidates}
        if placed in loads and loads[placed] + 1 <= capacity(loads, self._settings.move_factor):
            metrics.series(metrics.PLACEMENTS, self._tier, "kept").inc()
        else:
            metrics.series(metrics.PLACEMENTS, self._tier, "placed" if placed is None else "moved").inc()
            active = await self._active_conversations(loads)
            # Counted again after the await, with no await between here and the count
            # of this placement: calls placed meanwhile are in them.
            loads = {r.address: r.outstanding + self._placing[r.address] for r in candidates}
            held = {address: active.get(address, 0) + self._placing[address] for address in loads}
            placed = least_loaded(self._current_ring(), key, loads, held)
            self._placing[placed] += 1
            try:
                await self._placements.put(self._tier, key, placed)
            except StoreDown as e:
                log.debug("placement not remembered: %s", e)
                metrics.SESSION_STORE_ERRORS.labels("placement").inc()
            finally:
                # The balancer counts the call as in flight before anything else runs.
                self._placing[placed] -= 1
        return next(r for r in candidates if r.address == placed)

    async def _active_conversations(self, candidates: Iterable[str]) -> dict[str, int]:
        """Per candidate, the conversations with a recent turn there; none, and the
        loads in flight place alone, from a store that cannot count them."""
        try:
            return await self._placements.held(self._tier, candidates, self._settings.conversation_idle_s)
        except StoreDown as e:
            log.debug("placement store cannot count conversations: %s", e)
            metrics.SESSION_STORE_ERRORS.labels("placement").inc()
            return {}


def picker(
    name: str,
    replicas: ReplicaSet,
    affinity: AffinitySettings | None = None,
    placements: Placements | None = None,
) -> Picker:
    if name == "round_robin":
        return RoundRobin()
    if name == "prefix_affine":
        affinity = affinity or AffinitySettings()
        if affinity.remember and placements is not None:
            return RememberedPrefixAffine(affinity, lambda: replicas.replicas, replicas.tier, placements)
        return PrefixAffine(affinity, lambda: replicas.replicas)
    return PowerOfTwoChoices()


class Balancer:
    """A tier as one backend: each call goes to one available replica.

    Replicas this call already tried (retries, hedges, resumes) are avoided while
    others are available. Tier faults count against the replica's breaker; a first
    token far slower than its serving peers' ejects it as a latency outlier, never more
    than max_ejected_fraction of the replicas at once, where the picker sends every
    replica comparable calls (not prefix affinity's, unless its settings say so).
    """

    def __init__(self, replicas: ReplicaSet, picker: Picker) -> None:
        self.replicas = replicas
        self._picker = picker
        self._recall = picker.recall if isinstance(picker, Recalling) else None
        self._settings: BreakerSettings = replicas.breaker_settings
        self._latency_outliers = picker.ejects_latency_outliers

    def _candidates(self, call: Call) -> list[Replica]:
        replicas = self.replicas.replicas
        # Panic, as Envoy's panic threshold: when the breakers (failures, latency
        # outliers) have taken out every replica that its health check still calls
        # SERVING, those are tried rather than none: a slow answer beats UNAVAILABLE.
        available = [r for r in replicas if r.available] or [r for r in replicas if r.serving]
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
        replica = await self._recall(call, candidates) if self._recall is not None else None
        if replica is None:
            replica = self._picker.pick(call, candidates)
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
        if not self._latency_outliers or replica.latency.samples < s.outlier_min_samples or len(replicas) < 2:
            return False
        # Judged against the peers that serve now: a replica that died keeps the latency
        # it had while it shared the load, and beside it the survivor taking all of it
        # would look slow and be ejected, leaving none.
        peers = [r for r in replicas if r is not replica and r.available and r.latency.samples]
        if not peers:
            return False
        # Down (health), ejected, or ejected and on trial (half-open): not all it takes.
        out = sum(not r.serving or r.breaker.state != "closed" for r in replicas)
        if out + 1 > s.max_ejected_fraction * len(replicas):
            return False  # never take out so many that the rest drown
        typical = statistics.median(r.latency.value for r in peers)
        if replica.latency.value <= max(s.outlier_factor * typical, typical + s.outlier_floor_s):
            return False
        replica.breaker.eject()
        metrics.EJECTIONS.labels(replica.tier, "latency").inc()
        return True
