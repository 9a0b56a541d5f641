"""The local mesh: start each component as its own process, wait for health, stop.

State lives in `<run_dir>/mesh.json` (pids) and `<run_dir>/logs/<component>.log`,
so `tiermesh down` from another shell stops what `tiermesh up --detach` started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiermesh.config import Settings

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Component:
    name: str
    listen: str
    # The interpreter it runs under (Gold has its own venv), and its entry module.
    python: str = sys.executable
    module: str = "tiermesh.cli"
    # Readiness: grpc.health.v1 at `listen`, or Triton's HTTP ready endpoints.
    triton_http: str = ""


def components(settings: Settings) -> list[Component]:
    """In start order: tiers first, the router last (it needs them). A tier the
    router's configuration does not use is not started."""
    tiers = settings.router.tiers
    started: list[Component] = []
    if "gold" in tiers:
        gold = settings.gold
        started.append(
            Component("gold", gold.grpc_address, str(REPO / gold.python), "services.gold.server",
                      triton_http=f"http://{gold.host}:{gold.http_port}")
        )  # fmt: skip
    if "silver" in tiers:
        started.append(Component("silver", settings.silver.listen))
    started.append(Component("router", settings.router.listen))
    return started


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

    def up(self) -> None:
        if self.running():
            raise MeshError(f"the mesh is already running ({self.state_file}); `tiermesh down` first")
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        try:
            for component in components(self.settings):
                pids[component.name] = self._spawn(component)
                self.state_file.write_text(json.dumps(pids))
                self._wait_serving(component, pids[component.name])
        except BaseException:
            self.down()
            raise

    def _spawn(self, component: Component) -> int:
        argv = [component.python, "-m", component.module]
        if component.module == "tiermesh.cli":
            argv.append(component.name)
        if self.config_file is not None:
            argv += ["--config", str(self.config_file.resolve())]
        with self.log_file(component.name).open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not them
            )
        return process.pid

    def _wait_serving(self, component: Component, pid: int) -> None:
        def check_alive() -> None:
            if not _alive(pid):
                raise MeshError(
                    f"{component.name} exited during start; last log lines:\n" + self.tail(component.name)
                )

        timeout = self.settings.mesh.start_timeout_s
        if component.triton_http:
            wait_triton_ready(component.name, component.triton_http, timeout, check_alive)
        else:
            wait_serving(component.name, component.listen, timeout, check_alive)

    def down(self, timeout: float = 20.0) -> list[str]:
        """SIGTERM every component (router first), SIGKILL what outlives `timeout`."""
        if not self.state_file.exists():
            return []
        pids: dict[str, int] = json.loads(self.state_file.read_text())
        order = [c.name for c in reversed(components(self.settings)) if c.name in pids]
        for name in order:
            _signal_group(pids[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(pids[n]) for n in order) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in order:
            if _alive(pids[name]):
                _signal_group(pids[name], signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return order

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log_file(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_serving(
    name: str, address: str, timeout_s: float, check_alive: Callable[[], None] = lambda: None
) -> None:
    """Poll grpc.health.v1 at `address` until SERVING; `check_alive` raises if the
    process behind it died (no point waiting for a dead server)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
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


def wait_triton_ready(
    name: str, http: str, timeout_s: float, check_alive: Callable[[], None] = lambda: None
) -> None:
    """Poll Triton's server and model readiness (KServe v2 HTTP) until both are ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive()
        try:
            for path in ("/v2/health/ready", "/v2/models/ensemble/ready"):
                with urllib.request.urlopen(http + path, timeout=1.0) as response:
                    if response.status != 200:
                        raise OSError(response.status)
            return
        except OSError:
            time.sleep(0.3)  # not up yet
    raise MeshError(f"{name} not ready at {http} after {timeout_s} s")


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
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each component leads its own session; its group holds the engine's workers.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
