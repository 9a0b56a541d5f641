"""The local mesh: start each component as its own process, wait for health, stop.

State lives in `<run_dir>/mesh.json` (pids) and `<run_dir>/logs/<component>.log`,
so `tiermesh down` from another shell stops what `tiermesh up --detach` started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ops.observability import RULES, prometheus_config
from ops.settings import Settings
from tiermesh.process_group import EXITED, group_members, running
from tiermesh.tls import TlsSettings, sync_channel

REPO = Path(__file__).resolve().parents[1]
# How long, once a component's leader has exited, `down` gives the rest of its process
# group to follow before counting it as left behind.
FOLLOW_LEADER_S = 1.0


@dataclass(frozen=True)
class Stopped:
    """One component's stop: from SIGTERM to its exit, and whether it (or a worker it
    left behind) had to be killed."""

    name: str
    seconds: float
    killed: bool

    def __str__(self) -> str:
        return f"{self.name} {self.seconds:.1f} s" + (" (killed)" if self.killed else "")


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    # Ready when grpc.health.v1 at `grpc_health` says SERVING, or every URL in
    # `http_ready` answers 200 (Triton's ready endpoints, moto, the container, the emulator).
    grpc_health: str = ""
    http_ready: tuple[str, ...] = ()
    # Written before the process starts (e.g. its configuration).
    files: tuple[tuple[Path, str], ...] = ()
    # How the readiness check dials `grpc_health` (None: plaintext).
    tls: TlsSettings | None = None
    # An engine: locally it shares the router's cores, and a router that waits for its
    # turn on them answers late (in production each has its own node). So an engine
    # runs in Linux's SCHED_IDLE class, with its threads and child processes: it gets
    # the CPU time the router and its callers leave, and gives a core up as soon as they
    # want one.
    engine: bool = False


def _yield_cpu() -> None:
    """In the child before exec: SCHED_IDLE where Linux has it and allows it (a seccomp
    profile may not), else the lowest niceness. And the lowest niceness for its session:
    where Linux groups each session's processes (autogroup), it weighs the group as one
    against the router's, whatever its processes' class, so a busy engine's session
    would otherwise take its even share of the cores with the router waiting."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text("19")


def components(settings: Settings, config_file: Path | None) -> list[Component]:
    """In start order: what tiers depend on, the tiers, the router last. A tier the
    router's configuration does not use is not started."""
    config = ["--config", str(config_file.resolve())] if config_file else []
    python, gold_python = sys.executable, str(REPO / settings.gold.python)

    security = settings.security
    # The router's edge is checked as a client of the mesh's own CA would check it.
    edge_client = (
        security.mesh_tls.model_copy(update={"ca": security.edge_tls.ca}) if security.edge_tls.ca else None
    )

    def cli(command: str, listen: str, tls: TlsSettings | None = security.mesh_tls) -> Component:
        argv = [python, "-m", "ops.cli", command, *config]
        return Component(command, argv, grpc_health=listen, tls=tls)

    tiers = settings.router.tiers
    started: list[Component] = []
    if "bronze" in tiers:
        bronze = settings.bronze
        local = "http://127.0.0.1"
        if bronze.moto_port:
            argv = [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(bronze.moto_port)]
            started.append(Component("moto", argv, http_ready=(f"{local}:{bronze.moto_port}/moto-api/",)))
        if bronze.container_port:
            argv = [gold_python, "-m", "services.bronze.container", "--port", str(bronze.container_port)]
            pinged = (f"{local}:{bronze.container_port}/ping",)
            started.append(Component("container", argv, http_ready=pinged, engine=True))
        if bronze.emulator_port:
            argv = [python, "-m", "services.bronze.emulator", *config]
            started.append(Component("emulator", argv, http_ready=(f"{local}:{bronze.emulator_port}/ping",)))
        started.append(cli("bronze", bronze.listen))
    if "gold" in tiers:
        gold = settings.gold
        http = f"http://{gold.host}:{gold.http_port}"
        argv = [gold_python, "-m", "services.gold.server", *config]
        ready = (f"{http}/v2/health/ready", f"{http}/v2/models/ensemble/ready")
        started.append(Component("gold", argv, http_ready=ready, engine=True))
    if "silver" in tiers:
        started.append(dataclasses.replace(cli("silver", settings.silver.listen), engine=True))
    started.append(cli("router", settings.router.listen, edge_client))
    prometheus = prometheus_component(settings)
    if prometheus is not None:
        started.append(prometheus)
    return started


def prometheus_component(settings: Settings) -> Component | None:
    """Debian's Prometheus scraping every component, with the alert rules loaded:
    what `tiermesh cost` reads and what proves the dashboards' series exist."""
    port = settings.mesh.prometheus_port
    binary = shutil.which("prometheus")
    if not port or binary is None:
        return None
    run_dir = settings.mesh.run_dir.resolve()
    config = run_dir / "prometheus.yml"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={run_dir / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=2d",
    ]
    return Component(
        "prometheus",
        argv,
        http_ready=(f"http://127.0.0.1:{port}/-/ready",),
        files=((config, yaml.safe_dump(prometheus_config(settings, REPO / RULES))),),
    )


class MeshError(RuntimeError):
    pass


class LocalMesh:
    def __init__(self, settings: Settings, config_file: Path | None) -> None:
        self.settings = settings
        self.config_file = config_file
        self.run_dir = settings.mesh.run_dir
        self.state_file = self.run_dir / "mesh.json"

    def log_file(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def running(self) -> dict[str, int]:
        """Components recorded as started whose process is still alive."""
        if not self.state_file.exists():
            return {}
        pids: dict[str, int] = json.loads(self.state_file.read_text())
        return {name: pid for name, pid in pids.items() if _alive(pid)}

    def check_not_running(self) -> None:
        """Raise MeshError if a mesh started from this run directory still runs."""
        if self.running():
            raise MeshError(f"the mesh is already running ({self.state_file}); `tiermesh down` first")

    def up(self, stop_if_unfinished: bool = True) -> None:
        """Start every component in order, each once the one before serves. A start that
        fails or is interrupted stops what it started, unless the caller says it will
        (`tiermesh up` does, to report the stop and to shield it from a second Ctrl-C)."""
        self.check_not_running()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        try:
            for component in components(self.settings, self.config_file):
                pids[component.name] = self._spawn(component)
                self.state_file.write_text(json.dumps(pids))
                self._wait_serving(component, pids[component.name])
        except BaseException:
            if stop_if_unfinished:
                self.down()
            raise

    def _spawn(self, component: Component) -> int:
        for path, text in component.files:
            path.write_text(text)
        with self.log_file(component.name).open("ab") as log:
            process = subprocess.Popen(
                component.argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not them
                preexec_fn=_yield_cpu if component.engine else None,
            )
        return process.pid

    def _wait_serving(self, component: Component, pid: int) -> None:
        def check_alive() -> None:
            if not _alive(pid):
                raise MeshError(
                    f"{component.name} exited during start; last log lines:\n" + self.tail(component.name)
                )

        timeout = self.settings.mesh.start_timeout_s
        if component.http_ready:
            wait_http_ready(component.name, component.http_ready, timeout, check_alive)
        else:
            wait_serving(component.name, component.grpc_health, timeout, check_alive, component.tls)

    def down(self, timeout: float = 20.0) -> list[Stopped]:
        """SIGTERM every component (router first), SIGKILL what outlives `timeout`; how
        long each took, and whether it had to be killed."""
        if not self.state_file.exists():
            return []
        pids: dict[str, int] = json.loads(self.state_file.read_text())
        order = [c.name for c in reversed(components(self.settings, self.config_file)) if c.name in pids]
        # The leader only: it stops its own workers in order (vLLM's engine core, Triton),
        # where a signal to the whole group kills them under it mid-shutdown and fills
        # its log with their deaths. Whatever of a group outlives its leader, or the
        # timeout, is killed.
        began = time.monotonic()
        for name in order:
            _signal(pids[name], signal.SIGTERM)
        exited: dict[str, float] = {}
        while time.monotonic() < began + timeout:
            exited |= {n: time.monotonic() - began for n in order if n not in exited and not _alive(pids[n])}
            if len(exited) == len(order):
                # The leaders are out; their workers get a moment to follow before they
                # count as left behind.
                last = began + max(exited.values())
                if not any(group_alive(pids[n]) for n in order) or time.monotonic() > last + FOLLOW_LEADER_S:
                    break
            time.sleep(0.05)
        stopped = [
            Stopped(name, exited.get(name, timeout), name not in exited or group_alive(pids[name]))
            for name in order
        ]
        for name in order:
            _signal_group(pids[name], signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log_file(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_serving(
    name: str,
    address: str,
    timeout_s: float,
    check_alive: Callable[[], None] = lambda: None,
    tls: TlsSettings | None = None,
) -> None:
    """Poll grpc.health.v1 at `address` until SERVING; `check_alive` raises if the
    process behind it died (no point waiting for a dead server)."""
    deadline = time.monotonic() + timeout_s
    with sync_channel(address, tls) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            check_alive()
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.2)
    raise MeshError(f"{name} not SERVING at {address} after {timeout_s} s")


def wait_http_ready(
    name: str, urls: tuple[str, ...], timeout_s: float, check_alive: Callable[[], None] = lambda: None
) -> None:
    """Poll `urls` until each answers 200 (any other status raises HTTPError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive()
        try:
            for url in urls:
                with urllib.request.urlopen(url, timeout=1.0):
                    pass
            return
        except OSError:  # refused, or not ready yet (HTTPError is an OSError)
            time.sleep(0.3)
    raise MeshError(f"{name} not ready at {', '.join(urls)} after {timeout_s} s")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited children
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: started by another `tiermesh up`
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Not a zombie: another shell's `tiermesh up --detach` has exited, and whoever
    # inherits its children (init, a container's first process) may reap them late;
    # kill(pid, 0) still finds them until then.
    return running(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def group_alive(pid: int) -> bool:
    """Whether any process of the group `pid` leads is left running (zombies waiting
    to be reaped do not count)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = group_members(pid)
    return any(state not in EXITED for state in members.values()) if members else True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each component leads its own session; its group holds the engine's workers.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
