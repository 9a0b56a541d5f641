"""The proxy benchmarks' processes on loopback: stream backends, nginx, HAProxy, Redis
and tiermesh routers, started together and stopped together."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ops.mesh import group_alive, wait_serving
from tiermesh.process_group import group_members, proc_stat
from tiermesh.v1 import mesh_pb2

MESSAGES = 16
METHOD = "/tiermesh.v1.Mesh/Generate"
REQUEST = mesh_pb2.GenerateRequest(
    npc_id="guard-1", prompt="x", task=mesh_pb2.TASK_DIALOGUE, max_tokens=MESSAGES
)
TOOLS = {
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "h2load": "nghttp2-client",
    "redis-server": "redis-server",
}

NGINX = """worker_processes 1; daemon off; error_log {work}/nginx.err; pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}; keepalive_requests 1000000;
  grpc_read_timeout 900s; grpc_send_timeout 900s;
{servers}
}}
"""
NGINX_SERVER = """  upstream be{port} {{ server {backend}; keepalive 16; keepalive_requests 1000000; }}
  server {{ listen {listen} http2; location / {{ grpc_pass grpc://be{port}; }} }}"""
HAPROXY = """global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind {listen} proto h2
  default_backend be
backend be
  server s1 {backend} proto h2
"""


def workspace(name: str) -> tuple[Path, Path]:
    """A fresh folder for configs and logs, and the h2load request body in it; exits
    when a tool is missing."""
    if missing := [package for tool, package in TOOLS.items() if not shutil.which(tool)]:
        sys.exit(f"missing: {', '.join(missing)} (`make bench-tools` installs them)")
    work = Path(tempfile.mkdtemp(prefix=f"tiermesh-{name}-"))
    body = work / "request.bin"
    body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
    return work, body


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message, as h2load sends it for a body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def router_config(
    listen: str, backend: str, data_path: Mapping[str, Any] | None = None, redis_url: str = ""
) -> dict[str, Any]:
    """The router's full pipeline (validation, caches, admission, planner, fallback,
    balancer, retry, metrics) with one Silver replica: the backend."""
    task = {"tiers": ["silver"], "default_max_tokens": 16, "max_tokens_limit": 64, "default_deadline_s": 10}
    config: dict[str, Any] = {
        "router": {
            "listen": listen,
            "metrics_port": 0,
            "tiers": {"silver": {"endpoints": [backend], "expected_ttft_s": 0.002}},
            "tasks": dict.fromkeys(("intent", "bark", "dialogue", "longform"), task),
            "data_path": dict(data_path or {}),
        },
        "personas": {"guard-1": {"system": "You guard the gate."}},
    }
    if redis_url:
        config["state"] = {"backend": "redis", "redis_url": redis_url}
    return config


def redis_command(port: int) -> list[str]:
    """Debian's redis-server on loopback, nothing persisted: state for one run."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def proc_kb(pid: int, file: str, field: str) -> int:
    """A "Field:   N kB" line of /proc/<pid>/<file> (status, smaps_rollup), in KiB."""
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/{file}")


def rss_kb(pid: int) -> int:
    return proc_kb(pid, "status", "VmRSS")


def cpu_s(pid: int) -> float:
    """CPU time the process has used, user and system, in seconds (/proc/<pid>/stat)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shared_memory(pids: Iterable[int]) -> set[Path]:
    """The /dev/shm files these processes have mapped or open."""
    found: set[Path] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if " /dev/shm/" in line:
                    found.add(Path(line[line.index("/dev/shm/") :].removesuffix(" (deleted)")))
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("/dev/shm/"):
                        found.add(Path(target.removesuffix(" (deleted)")))
    return found


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class Processes:
    """Started processes by name, each in a process group of its own (vLLM's engine core
    and nginx's worker are children): stopped, or killed, whole. Each one's output goes
    to `<work>/<name>.log`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.popen: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, command: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        environment = {**os.environ, **(env or {})}
        with self.file(name, "log").open("ab") as log:
            self.popen[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=environment, cwd=cwd, start_new_session=True,
            )  # fmt: skip

    def file(self, name: str, suffix: str) -> Path:
        """`<work>/<name>.<suffix>`: a label may hold any character ("HTTP/2 relay"); the
        file's name keeps the safe ones."""
        return self.work / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.{suffix}"

    def backend(self, name: str, listen: str, pace_ms: float = 0.0) -> None:
        self.start(name, [sys.executable, "-m", "bench.stream_backend", "--listen", listen,
                          "--pace-ms", str(pace_ms)])  # fmt: skip
        wait_serving(name, listen, 30)

    def relay(self, name: str, module: str, listen: str, backend: str, *flags: str) -> None:
        """A reference relay of bench/: `passthrough` (grpc.aio), `h2_relay` (HTTP/2
        framed by nghttp2) or `tcp_relay` (bytes)."""
        command = ["--listen", listen, "--backend", backend, *flags]
        self.start(name, [sys.executable, "-m", f"bench.{module}", *command])

    def router(
        self,
        name: str,
        config: dict[str, Any],
        env: Mapping[str, str] | None = None,
        checkout: Path | None = None,
    ) -> None:
        """A router from this checkout, or from another one (bench/proxy_revisions.py):
        `python -m` there imports that checkout's code first."""
        path = self.file(name, "yaml")
        path.write_text(yaml.safe_dump(config))
        # The command line moved from tiermesh/cli.py to ops/cli.py with the floors (#25).
        cli = "ops.cli" if (checkout or Path()).joinpath("ops", "cli.py").exists() else "tiermesh.cli"
        command = [sys.executable, "-m", cli, "router", "--config", str(path.resolve())]
        self.start(name, command, env, checkout)
        wait_serving(name, config["router"]["listen"], 60)

    def nginx(self, routes: Mapping[str, str]) -> None:
        """One nginx worker; `routes` maps each listen address to its backend."""
        servers = "\n".join(
            NGINX_SERVER.format(port=listen.rpartition(":")[2], listen=listen, backend=backend)
            for listen, backend in routes.items()
        )
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX.format(work=self.work, servers=servers))
        self.start("nginx", ["nginx", "-c", str(conf)])

    def haproxy(self, listen: str, backend: str) -> None:
        conf = self.work / "haproxy.cfg"
        conf.write_text(HAPROXY.format(listen=listen, backend=backend))
        self.start("haproxy", ["haproxy", "-f", str(conf)])

    def redis(self, port: int) -> str:
        self.start("redis", redis_command(port))
        return f"redis://127.0.0.1:{port}/0"

    def pid(self, name: str) -> int:
        """The process doing the relaying: nginx's worker, not its master."""
        pid = self.popen[name].pid
        return children(pid)[0] if name == "nginx" else pid

    def kill(self, name: str) -> None:
        """SIGKILL, the whole group: a replica that dies at once, as a crash would.

        A crashed container's /dev/shm goes with it; on this host the segments the group
        had mapped would stay (vLLM's engine buffers, ~160 MiB each, unlinked by nobody:
        its resource tracker dies with it), so they are removed, as its pod's would be."""
        pid = self.popen[name].pid
        segments = shared_memory(group_members(pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.popen[name].wait()
        for segment in segments:
            segment.unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM each leader (it stops its own workers), then SIGKILL whatever of each
        group is left after `timeout`, or a second after its leader left: what a leader
        leaves behind for a moment (Python's resource tracker, unlinking its shared
        memory) gets that second, as `tiermesh down` gives it."""
        for process in self.popen.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.popen.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        followers_by = min(deadline, time.monotonic() + 1.0)
        while time.monotonic() < followers_by and any(group_alive(p.pid) for p in self.popen.values()):
            time.sleep(0.05)
        for process in self.popen.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.popen.clear()


@contextlib.contextmanager
def running(work: Path) -> Iterator[Processes]:
    processes = Processes(work)
    try:
        yield processes
    finally:
        processes.stop()


def settle(seconds: float = 1.0) -> None:
    """nginx and HAProxy have no health service: give them a moment to listen."""
    time.sleep(seconds)
