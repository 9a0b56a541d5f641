"""The order in which a full tier's waiting calls get its stream slots.

By traffic class first (critical, standard, sheddable: the Gateway API Inference
Extension's bands, SGLang's classes); within a class, tenants take turns by tokens, not
calls (deficit round robin, Shreedhar and Varghese): a tenant sending 1000-token
long-form gets as many tokens served as one sending 4-token intents, not 250× as many.
A call's cost is estimated when it queues (prompt plus max_tokens) and corrected by
what the answer really used when it ends, as Dynamo's and Envoy AI Gateway's token
accounting do. A call that has waited `aging_s` is served as one class higher (again
after twice as long), so no class starves while a higher one keeps the tier busy.

The waiting itself (futures, timeouts, shedding) is the stream limit's
(router/policies/limit.py); this is only the order.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from router.stats import Clock

# Tenants whose debt (answers longer than estimated) is kept after their queue
# emptied; the least recently seen are forgiven first, so hostile client ids cannot
# grow it without bound.
MAX_DEBTORS = 10_000


@dataclass(eq=False)
class Waiter:
    """One call waiting for a slot."""

    tenant: str
    band: int  # its class (0: the highest), as asked
    cost: float  # estimated tokens
    since: float  # when it started waiting
    give_up_at: float  # when waiting longer would miss its deadline
    granted: asyncio.Future[None]  # set when it gets a slot, failed when displaced
    priority: str = ""  # the class's name, for metrics and messages
    served_band: int = -1  # the band it was served from (after aging)


class FairQueue:
    def __init__(
        self,
        bands: int,
        aging_s: float,
        quantum: float,
        weight: Callable[[str], float],
        clock: Clock = time.monotonic,
    ) -> None:
        self._aging_s = aging_s
        self._quantum = quantum
        self._weight = weight
        self._clock = clock
        # Per band: the tenants with waiters, in turn order, each with its FIFO.
        self._bands: list[OrderedDict[str, deque[Waiter]]] = [OrderedDict() for _ in range(bands)]
        self._deficit: list[OrderedDict[str, float]] = [OrderedDict() for _ in range(bands)]
        # Per band: the tenant whose turn it is and has had its quantum for it.
        self._turn: list[str | None] = [None] * bands
        self._counts = [0] * bands

    def __len__(self) -> int:
        return sum(self._counts)

    def ahead(self, band: int) -> int:
        """Waiters of `band` and higher: what a newcomer of `band` waits behind at most."""
        return sum(self._counts[: band + 1])

    def ahead_of(self, tenant: str, band: int) -> float:
        """About how many waiters a newcomer of `tenant` and `band` would be served after:
        every one of a higher class, and in its own, its tenant's earlier calls and, for
        each of them and itself, a turn of every other tenant waiting (by weight)."""
        tenants = self._bands[band]
        mine = len(tenants.get(tenant, ()))
        others = sum(self._weight(other) for other in tenants if other != tenant) / self._weight(tenant)
        return sum(self._counts[:band]) + min(self._counts[band], mine + (mine + 1) * others)

    def push(self, waiter: Waiter) -> None:
        self._append(waiter.band, waiter)

    def remove(self, waiter: Waiter) -> bool:
        """Take a waiter out (it left, or was displaced); False when it was not here."""
        for band, tenants in enumerate(self._bands):
            queue = tenants.get(waiter.tenant)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                self._counts[band] -= 1
                if not queue:
                    self._leave(band, waiter.tenant)
                return True
        return False

    def lowest(self) -> tuple[int, int, Waiter] | None:
        """The first to displace when the queue is full, with the class it waits in now
        and how many calls its tenant has waiting there: the newest waiter of the tenant
        with the most waiting in the lowest class waiting (the fattest flow, as fair
        queues drop from)."""
        for band in reversed(range(len(self._bands))):
            tenants = self._bands[band]
            if tenants:
                queue = max(tenants.values(), key=len)
                return band, len(queue), queue[-1]
        return None

    def waiting(self, tenant: str, band: int) -> int:
        return len(self._bands[band].get(tenant, ()))

    def below(self, band: int) -> Iterator[tuple[int, Waiter]]:
        """Waiters of classes lower than `band`, with the class each waits in now (a
        snapshot: safe to remove from)."""
        for lower in range(band + 1, len(self._bands)):
            for queue in list(self._bands[lower].values()):
                for waiter in list(queue):
                    yield lower, waiter

    def pop(
        self,
        fits: Callable[[int], bool],
        tenant_fits: Callable[[str], bool] = lambda _: True,
        owns: Callable[[str], bool] = lambda _: False,
    ) -> Waiter | None:
        """The next waiter to serve, from the highest class waiting, if `fits(band)` says a
        call of that class may take the free slot; else None. Tenants `tenant_fits` turns
        away (the slot is reserved for another) are passed over, down to lower classes; a
        tenant that `owns` a free slot (its reservation) takes it whatever its class."""
        self._age()
        may = self._may(fits, tenant_fits, owns)
        for band, tenants in enumerate(self._bands):
            if any(may(band, tenant) for tenant in tenants):
                return self._next_turn(band, functools.partial(may, band))
        return None

    def could_take(
        self,
        band: int,
        fits: Callable[[int], bool],
        tenant_fits: Callable[[str], bool],
        owns: Callable[[str], bool],
    ) -> bool:
        """Whether a waiter of `band` or higher could take a slot now: a newcomer of
        `band` does not go before it."""
        may = self._may(fits, tenant_fits, owns)
        return any(may(higher, tenant) for higher in range(band + 1) for tenant in self._bands[higher])

    def _may(
        self, fits: Callable[[int], bool], tenant_fits: Callable[[str], bool], owns: Callable[[str], bool]
    ) -> Callable[[int, str], bool]:
        """Whether a waiter of a band and tenant may take the free slot: once a class
        waiting does not fit, no lower class does either (headroom grows downwards), except
        a tenant's own reserved slot."""
        blocked = len(self._bands)
        for band, tenants in enumerate(self._bands):
            if tenants and not fits(band):
                blocked = band
                break
        return lambda band, tenant: owns(tenant) or (band < blocked and tenant_fits(tenant))

    def charge(self, waiter: Waiter, tokens: float) -> None:
        """Correct a served waiter's tenant by what its answer used beyond (or short of)
        the estimate."""
        band = waiter.served_band
        if band < 0 or tokens == waiter.cost:
            return
        deficits = self._deficit[band]
        deficit = deficits.pop(waiter.tenant, 0.0) - (tokens - waiter.cost)
        if waiter.tenant in self._bands[band] or deficit < 0:
            deficits[waiter.tenant] = deficit  # most recent last
            if len(deficits) > MAX_DEBTORS:
                self._forgive(band)

    def _next_turn(self, band: int, tenant_fits: Callable[[str], bool]) -> Waiter:
        """DRR's next serve in `band`; the caller has checked that a tenant there fits."""
        tenants, deficits = self._bands[band], self._deficit[band]
        while True:
            tenant, queue = next(iter(tenants.items()))
            if not tenant_fits(tenant):  # may not take this slot: keeps its deficit
                tenants.move_to_end(tenant)
                if self._turn[band] == tenant:
                    self._turn[band] = None
                continue
            if self._turn[band] != tenant:  # its turn begins: one quantum more
                self._turn[band] = tenant
                deficits[tenant] = deficits.get(tenant, 0.0) + self._quantum * self._weight(tenant)
            head = queue[0]
            if deficits[tenant] >= head.cost:
                deficits[tenant] -= head.cost
                queue.popleft()
                self._counts[band] -= 1
                if not queue:
                    self._leave(band, tenant)
                head.served_band = band
                return head
            tenants.move_to_end(tenant)  # not enough yet: the next tenant's turn
            self._turn[band] = None

    def _append(self, band: int, waiter: Waiter) -> None:
        tenants = self._bands[band]
        queue = tenants.get(waiter.tenant)
        if queue is None:
            queue = tenants[waiter.tenant] = deque()
        queue.append(waiter)
        self._counts[band] += 1

    def _leave(self, band: int, tenant: str) -> None:
        """A tenant with no more waiters in `band` keeps only its debt, never a credit
        (DRR's rule: an idle tenant must not bank turns)."""
        del self._bands[band][tenant]
        if self._turn[band] == tenant:
            self._turn[band] = None
        deficits = self._deficit[band]
        deficit = deficits.pop(tenant, 0.0)
        if deficit < 0:
            deficits[tenant] = deficit

    def _forgive(self, band: int) -> None:
        deficits = self._deficit[band]
        for tenant in list(deficits):
            if len(deficits) <= MAX_DEBTORS:
                return
            if tenant not in self._bands[band]:
                del deficits[tenant]

    def _age(self) -> None:
        """Move waiters that have waited long enough up a class (each FIFO is oldest
        first, so only heads need looking at)."""
        now = self._clock()
        for band in range(1, len(self._bands)):
            for tenant, queue in list(self._bands[band].items()):
                while queue:
                    head = queue[0]
                    target = max(0, head.band - int((now - head.since) / self._aging_s))
                    if target >= band:
                        break
                    queue.popleft()
                    self._counts[band] -= 1
                    self._append(target, head)
                if not queue:
                    self._leave(band, tenant)
