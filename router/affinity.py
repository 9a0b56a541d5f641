"""Prefix affinity: where a call's prompt prefix is most likely already in an engine's KV
cache, so the replica skips computing it again.

A conversation's prompt is its persona, its history and the new turn; each turn's prompt
begins with the whole of the last one. vLLM keeps computed prefixes (blocks of tokens,
keyed by everything before them), so a turn that reaches the replica that served the
last one pays only for what is new. The router does not see engines' caches; it keeps a
conversation on one replica instead, by hashing an affinity key onto a ring of the tier's
replicas (consistent hashing: every router replica computes the same ring from the same
addresses, with no shared state, and a replica that leaves moves only its own keys).

Bounded load (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
Loads"): a replica already holding more than `load_factor` × the mean load passes the
key on to the next replica on the ring, so a popular persona cannot pile onto one
replica; the key comes back when the load evens out. A replica's load is the router's own
count of its calls in flight.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping

from router.call import CHARS_PER_TOKEN, Call

# Points per replica on the ring: with 128, each of a few replicas owns within a few
# per cent of its share of keys.
VIRTUAL_NODES = 128


def affinity_key(call: Call, leading_tokens: int) -> bytes:
    """The NPC and session when the call has a session (its history is the prefix that
    grows), else the prompt's leading `leading_tokens` tokens' worth of characters (the
    persona and the start of the turn: what calls without a session share). A session id
    of only blanks says nothing: the prompt decides."""
    if call.session_id.strip():
        return b"session\0" + call.npc_id.encode() + b"\0" + call.session_id.encode()
    leading = "\0".join(message.content for message in call.messages)[: leading_tokens * CHARS_PER_TOKEN]
    return b"prompt\0" + leading.encode()


def point(data: bytes) -> int:
    """A stable 64-bit hash (Python's hash() differs from process to process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Members (replica addresses) placed at VIRTUAL_NODES points each."""

    def __init__(self, members: Iterable[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        self.members = frozenset(members)
        placed = sorted(
            (point(f"{member}#{i}".encode()), member) for member in self.members for i in range(virtual_nodes)
        )
        self._points = [at for at, _ in placed]
        self._owners = [member for _, member in placed]

    def walk(self, key: bytes) -> Iterator[str]:
        """Every member once, in ring order from the key's point: the key's owner first,
        then whom it passes to."""
        if not self._owners:
            return
        start = bisect.bisect(self._points, point(key))
        seen: set[str] = set()
        for i in range(len(self._owners)):
            member = self._owners[(start + i) % len(self._owners)]
            if member not in seen:
                seen.add(member)
                yield member
                if len(seen) == len(self.members):
                    return


def capacity(loads: Mapping[str, int], load_factor: float) -> int:
    """The most calls a replica may hold and still take one more: `load_factor` × the
    mean load counting the new call, rounded up (so never below 1)."""
    return math.ceil(load_factor * (sum(loads.values()) + 1) / len(loads))


def bounded_owner(ring: HashRing, key: bytes, loads: Mapping[str, int], load_factor: float) -> str:
    """The first replica on the key's walk among `loads`' (the candidates) with room for
    one more call under the bound. Some candidate always has room (the bound is at least
    the mean); ties and members not on the ring fall to the least loaded."""
    limit = capacity(loads, load_factor)
    for member in ring.walk(key):
        if member in loads and loads[member] + 1 <= limit:
            return member
    return min(loads, key=lambda member: loads[member])


def least_loaded(
    ring: HashRing, key: bytes, loads: Mapping[str, int], conversations: Mapping[str, int]
) -> str:
    """The candidate among `loads` holding the fewest active `conversations`, then with
    the fewest calls in flight; among equals, the first on the key's walk, so that
    routers seeing the same counts agree."""
    order = {member: i for i, member in enumerate(ring.walk(key))}
    return min(
        loads, key=lambda member: (conversations.get(member, 0), loads[member], order.get(member, len(order)))
    )
