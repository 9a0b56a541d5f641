"""The nearest of the situations already answered, per group (a persona and its labels).

Unit vectors sit in one matrix per group, so a lookup is one matrix-vector product over
that group's rows and never scans another persona's. A group holds at most `per_group`
rows (the oldest goes first), which bounds a lookup's cost on the event loop whatever the
cache above holds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import numpy as np

G = TypeVar("G", bound=Hashable)
K = TypeVar("K", bound=Hashable)
Vector = np.ndarray[Any, np.dtype[np.float32]]


class _Group(Generic[K]):
    def __init__(self, dimensions: int, capacity: int) -> None:
        self.rows = np.zeros((min(capacity, 16), dimensions), dtype=np.float32)
        self.capacity = capacity
        self.slots: OrderedDict[K, int] = OrderedDict()  # oldest first
        self.keys: list[K] = []  # by slot

    def put(self, key: K, vector: Vector) -> None:
        slot = self.slots.get(key)
        if slot is None:
            if len(self.keys) == self.capacity:
                self.remove(next(iter(self.slots)))
            slot = len(self.keys)
            if slot == len(self.rows):
                grown = np.zeros((min(2 * slot, self.capacity), self.rows.shape[1]), dtype=np.float32)
                grown[:slot] = self.rows
                self.rows = grown
            self.keys.append(key)
        else:
            del self.slots[key]  # re-added below as the newest
        self.slots[key] = slot
        self.rows[slot] = vector

    def remove(self, key: K) -> None:
        slot = self.slots.pop(key, None)
        if slot is None:
            return
        last = len(self.keys) - 1
        if slot != last:  # the last row fills the hole, so rows stay packed
            moved = self.keys[last]
            self.rows[slot] = self.rows[last]
            self.keys[slot] = moved
            self.slots[moved] = slot  # an existing key keeps its place in the age order
        self.keys.pop()

    def nearest(self, vector: Vector) -> tuple[K, float] | None:
        if not self.keys:
            return None
        scores = self.rows[: len(self.keys)] @ vector
        best = int(np.argmax(scores))
        return self.keys[best], float(scores[best])


class NearIndex(Generic[G, K]):
    def __init__(self, dimensions: int, per_group: int) -> None:
        self._dimensions = dimensions
        self._per_group = per_group
        self._groups: dict[G, _Group[K]] = {}

    def __len__(self) -> int:
        return sum(len(group.keys) for group in self._groups.values())

    def put(self, group: G, key: K, vector: Vector) -> None:
        found = self._groups.get(group)
        if found is None:
            found = self._groups[group] = _Group(self._dimensions, self._per_group)
        found.put(key, vector)

    def remove(self, group: G, key: K) -> None:
        found = self._groups.get(group)
        if found is None:
            return
        found.remove(key)
        if not found.keys:
            del self._groups[group]

    def nearest(self, group: G, vector: Vector) -> tuple[K, float] | None:
        """The group's row most similar to `vector` (cosine: all rows are unit), if any."""
        found = self._groups.get(group)
        return found.nearest(vector) if found is not None else None
