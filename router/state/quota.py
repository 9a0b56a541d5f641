"""Tenants' token quotas: in-process, or in Redis so that every router replica draws
from one bucket per tenant.

A quota is two token buckets per tenant, input and output, each holding at most
`burst_s` seconds' worth (a minute by default) and refilled continuously. A call is
admitted while both are above zero (a tenant in debt waits until it has paid it off);
its estimated prompt and its max_tokens are taken at admission, so calls in flight
count, and the difference to the tier's real counts is settled when it ends. A bucket
may so go below zero, never by more than it holds. Like LiteLLM's and Envoy AI
Gateway's token limits, with the answer reserved rather than trusted.

In Redis each change is one Lua script (atomic, on the server's clock), so replicas
neither race nor need synchronised clocks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from router.stats import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Tokens per minute in and out (0: unmetered), and the seconds' worth a bucket holds."""

    input_per_min: int
    output_per_min: int
    burst_s: float = 60.0

    def capacity(self, per_min: int) -> float:
        return per_min * self.burst_s / 60


class QuotaStore(Protocol):
    async def take(
        self, tenant: str, limits: Limits, input_tokens: int, output_tokens: int
    ) -> tuple[float, str]:
        """(0, "") when the call is admitted and its tokens taken; else the seconds until
        it would be, and which bucket ("in" or "out") is empty."""
        ...

    async def charge(self, tenant: str, limits: Limits, input_tokens: int, output_tokens: int) -> None:
        """Settle a call: take what it used beyond what `take` took (negative: give back)."""
        ...

    async def close(self) -> None: ...


def refill(level: float, stamp: float, now: float, per_min: int, capacity: float) -> float:
    return min(capacity, level + (now - stamp) * per_min / 60)


def spend(level: float, tokens: float, capacity: float) -> float:
    return min(capacity, max(-capacity, level - tokens))


def wait_s(level: float, per_min: int) -> float:
    """Until an empty bucket is above zero again."""
    return max(-level, 1.0) * 60 / per_min


class MemoryQuota:
    """One router's buckets."""

    # Tenants kept; the least recently seen start full again.
    MAX_TENANTS = 10_000

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def _level(self, tenant: str, direction: str, per_min: int, capacity: float, now: float) -> float:
        level, stamp = self._buckets.pop((tenant, direction), (capacity, now))
        return refill(level, stamp, now, per_min, capacity)

    def _store(self, tenant: str, direction: str, level: float, now: float) -> None:
        self._buckets[(tenant, direction)] = (level, now)  # most recent last
        while len(self._buckets) > self.MAX_TENANTS:
            del self._buckets[next(iter(self._buckets))]

    async def take(
        self, tenant: str, limits: Limits, input_tokens: int, output_tokens: int
    ) -> tuple[float, str]:
        now = self._clock()
        buckets = [
            (
                direction,
                per_min,
                tokens,
                self._level(tenant, direction, per_min, limits.capacity(per_min), now),
            )
            for direction, per_min, tokens in (
                ("in", limits.input_per_min, input_tokens),
                ("out", limits.output_per_min, output_tokens),
            )
            if per_min
        ]
        refused = next(((d, per_min, level) for d, per_min, _, level in buckets if level <= 0), None)
        for direction, per_min, tokens, level in buckets:
            spent = level if refused else spend(level, tokens, limits.capacity(per_min))
            self._store(tenant, direction, spent, now)
        if refused is None:
            return 0.0, ""
        direction, per_min, level = refused
        return wait_s(level, per_min), direction

    async def charge(self, tenant: str, limits: Limits, input_tokens: int, output_tokens: int) -> None:
        now = self._clock()
        for direction, per_min, tokens in (
            ("in", limits.input_per_min, input_tokens),
            ("out", limits.output_per_min, output_tokens),
        ):
            if per_min and tokens:
                capacity = limits.capacity(per_min)
                level = self._level(tenant, direction, per_min, capacity, now)
                self._store(tenant, direction, spend(level, tokens, capacity), now)

    async def close(self) -> None:
        self._buckets.clear()


# KEYS: the tenant's input and output buckets. ARGV: input and output tokens per
# minute (0: unmetered), input and output tokens to take, "take" (admit or refuse) or
# "charge" (always take), and the seconds' worth a bucket holds. Returns {seconds to
# wait, as a string; "in" | "out" | ""}. MemoryQuota's arithmetic, on Redis's clock.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local burst_s = tonumber(ARGV[6])
local function level(key, per_min)
  local cap = per_min * burst_s / 60
  local raw = redis.call('HMGET', key, 'level', 'stamp')
  local lvl = tonumber(raw[1]) or cap
  local stamp = tonumber(raw[2]) or now
  return math.min(cap, lvl + (now - stamp) * per_min / 60)
end
local function store(key, lvl, per_min)
  local cap = per_min * burst_s / 60
  lvl = math.min(cap, math.max(-cap, lvl))
  redis.call('HSET', key, 'level', tostring(lvl), 'stamp', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst_s * 2000) + 60000)
end
local per = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local tokens = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local names = {'in', 'out'}
local levels = {}
for i = 1, 2 do
  if per[i] > 0 then levels[i] = level(KEYS[i], per[i]) end
end
if ARGV[5] == 'take' then
  for i = 1, 2 do
    if levels[i] ~= nil and levels[i] <= 0 then
      for j = 1, 2 do
        if levels[j] ~= nil then store(KEYS[j], levels[j], per[j]) end
      end
      return {tostring(math.max(-levels[i], 1) * 60 / per[i]), names[i]}
    end
  end
end
for i = 1, 2 do
  if levels[i] ~= nil then store(KEYS[i], levels[i] - tokens[i], per[i]) end
end
return {'0', ''}
"""


class RedisQuota:
    """Buckets shared by every router replica. When Redis cannot be reached, calls are
    admitted (a quota is a fairness tool, not a reason to take the game down) and that
    is logged."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(SCRIPT)
        self._warned = 0.0

    @staticmethod
    def _keys(tenant: str) -> list[str]:
        return [f"tiermesh:quota:{tenant}:in", f"tiermesh:quota:{tenant}:out"]

    async def _run(
        self, tenant: str, limits: Limits, tokens: tuple[int, int], mode: str
    ) -> tuple[float, str]:
        args: list[int | float | str] = [
            limits.input_per_min,
            limits.output_per_min,
            *tokens,
            mode,
            limits.burst_s,
        ]
        try:
            wait, direction = await self._script(keys=self._keys(tenant), args=args)
        except (RedisError, OSError) as e:
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("token quotas unavailable (%s): admitting calls unmetered", e)
            return 0.0, ""
        return float(wait), direction.decode() if isinstance(direction, bytes) else str(direction)

    async def take(
        self, tenant: str, limits: Limits, input_tokens: int, output_tokens: int
    ) -> tuple[float, str]:
        return await self._run(tenant, limits, (input_tokens, output_tokens), "take")

    async def charge(self, tenant: str, limits: Limits, input_tokens: int, output_tokens: int) -> None:
        await self._run(tenant, limits, (input_tokens, output_tokens), "charge")

    async def close(self) -> None:
        await self._redis.aclose()


def quota_store(backend: str, redis_url: str) -> QuotaStore:
    """Shared through Redis when session state is (router.state.backend)."""
    return RedisQuota(redis_url) if backend == "redis" else MemoryQuota()
