"""Running the router: one process, or several on one port.

gRPC streams are pinned to the connection that opened them, and one Python process
relays on one core. With `router.data_path.workers: N` the router starts N processes
that all listen on the port with SO_REUSEPORT; the kernel spreads new connections
among them. They share sessions through Redis (config refuses anything else).
With `pin_cpus: true`, worker i runs on the i-th CPU the router may use.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import wait
from types import FrameType

from router.settings import RouterConfig
from tiermesh.logs import setup_logging
from tiermesh.serving import run as run_service

log = logging.getLogger(__name__)


def pin_to_cpu(index: int) -> int:
    """Run this process, every thread it has and every thread those start, on the
    index-th CPU it may use (round robin past the last); returns that CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[index % len(allowed)]
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(thread), {cpu})
    return cpu


def stop_with_supervisor() -> None:
    """A spawned worker stops when its supervisor dies, even by SIGKILL: otherwise it would
    serve on, holding the port, with nobody to restart the router."""
    supervisor = multiprocessing.parent_process()
    if supervisor is None:
        return

    def watch() -> None:
        wait([supervisor.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's own drain and stop

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def worker(config: RouterConfig, index: int = 0) -> None:
    from router.app import serve

    setup_logging()
    stop_with_supervisor()
    if config.router.data_path.pin_cpus:
        try:
            log.info("router worker %d runs on CPU %d", index, pin_to_cpu(index))
        except OSError as e:  # a tuning setting, not a reason to stay down
            log.warning("router worker %d not pinned to a CPU: %s", index, e)
    run_service(serve(config, index), config.router.data_path.event_loop)


def run(config: RouterConfig) -> None:
    """Serve in the foreground until SIGTERM/SIGINT. With several workers, this process
    only supervises: when one worker dies, all stop, so the supervisor above restarts
    the router whole rather than running it short of a worker."""
    count = config.router.data_path.workers
    if count == 1:
        worker(config)
        return
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no gRPC state forked
    processes = [
        spawn.Process(target=worker, args=(config, i), name=f"tiermesh-router-{i}") for i in range(count)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            process.terminate()  # SIGTERM: each worker drains its streams

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.start()
    wait([process.sentinel for process in processes])
    failed = not stopping
    if failed:
        log.error("a router worker exited; stopping the others")
        stop(signal.SIGTERM, None)
    for process in processes:
        process.join()
    if failed:
        raise SystemExit(1)
