"""What every test session shares."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from router.heartbeat import Heartbeat
from router.settings import DataPathSettings


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def loop_heartbeat() -> AsyncIterator[None]:
    """The router's loop heartbeat (router/heartbeat.py), as `start_router` runs it, on
    the tests' one loop: a policy built here without a router process keeps its
    deadlines on a loop that keeps time as the router's does. Without it, a test that
    waits idle for a timer tests this machine's wake-ups, not the policy."""
    heartbeat = Heartbeat(DataPathSettings().loop_heartbeat_s, lambda lag: None)
    heartbeat.start()
    yield
    heartbeat.stop()
