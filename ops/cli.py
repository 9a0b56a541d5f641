"""The `tiermesh` command."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import grpc
import typer
from rich.console import Console

from ops.settings import Settings, load_settings
from tiermesh.config import config_path
from tiermesh.logs import setup_logging
from tiermesh.process_exit import skip_exit_collection

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

app = typer.Typer(help="tiermesh: a gRPC token-streaming inference mesh for game NPCs.")
console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings (default: $TIERMESH_CONFIG, config/mesh.yaml)"),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except Exception as e:  # a bad config is a user error: say what, not a traceback
        err.print(f"[red]invalid configuration:[/] {e}")
        raise typer.Exit(2) from None


@app.command()
def router(config: ConfigOption = None) -> None:
    """Serve tiermesh.v1.Mesh (the router) in the foreground."""
    from router.heap import restart_on_huge_pages
    from router.workers import run

    settings = _settings(config)
    if settings.router.data_path.huge_page_heap:
        restart_on_huge_pages()  # returns in the restarted process
    run(settings.router_config())


@app.command()
def silver(config: ConfigOption = None) -> None:
    """Serve the Silver tier (vLLM in-process) in the foreground."""
    from services.silver.server import run

    settings = _settings(config)
    setup_logging()
    run(settings.silver, settings.security.mesh_tls, settings.tracing)
    skip_exit_collection()


@app.command()
def bronze(config: ConfigOption = None) -> None:
    """Serve the Bronze bridge (SageMaker async endpoint) in the foreground."""
    from services.bronze.server import serve

    settings = _settings(config)
    setup_logging()
    asyncio.run(serve(settings.bronze, settings.security.mesh_tls))


@app.command("bronze-status")
def bronze_status(
    config: ConfigOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON for CI")] = False,
) -> None:
    """Check the Bronze endpoint: InService, async config, output path, topics, S3."""
    import json

    from rich.table import Table

    from services.bronze.aws import endpoint_status

    status = endpoint_status(_settings(config).bronze)
    if json_output:
        print(json.dumps({"ok": status.ok, "checks": [c.__dict__ for c in status.checks]}))
    else:
        table = Table("check", "result", "detail")
        for check in status.checks:
            table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAILED[/]", check.detail)
        console.print(table)
    raise typer.Exit(0 if status.ok else 1)


@app.command()
def validate(
    target: Annotated[str, typer.Argument(help="gold | silver | bronze | all")],
    config: ConfigOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON for CI")] = False,
    probes: Annotated[int | None, typer.Option(help="latency probes (default: validation.probes)")] = None,
) -> None:
    """Check deployed tiers: health, readiness, inference, latency SLO, metrics; exit 1 on failure."""
    import json

    from rich.table import Table

    from ops.validate import TIERS
    from ops.validate import validate as run

    settings = _settings(config)
    targets: list[str] = [t for t in TIERS if t in settings.router.tiers] if target == "all" else [target]
    if any(t not in TIERS for t in targets):
        err.print(f"[red]unknown target {target!r}[/]: gold, silver, bronze or all")
        raise typer.Exit(2)
    checks = asyncio.run(run(settings, targets, probes or settings.validation.probes))
    ok = all(c.ok for c in checks)
    if json_output:
        print(json.dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}))
    else:
        table = Table("tier", "check", "result", "detail")
        for c in checks:
            table.add_row(c.tier, c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail)
        console.print(table)
    if not ok:
        failed = ", ".join(f"{c.tier}: {c.name}" for c in checks if not c.ok)
        err.print(f"[red]failed:[/] {failed}")
    raise typer.Exit(0 if ok else 1)


@app.command()
def cost(
    config: ConfigOption = None,
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus URL (default: cost.prometheus_url)")
    ] = None,
    window: Annotated[str, typer.Option(help="usage window: 30m, 24h, 7d")] = "24h",
    snapshot: Annotated[
        list[Path] | None, typer.Option(help="saved /metrics pages to read instead of Prometheus")
    ] = None,
    period: Annotated[str | None, typer.Option(help="what a snapshot covers (default: since start)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """Per-tier cost: the price table × usage from Prometheus (or a snapshot)."""
    import json

    from ops.cost import PrometheusError, cost_tables, costs, from_prometheus, from_snapshot, report

    settings = _settings(config)
    try:
        if snapshot:
            usage = from_snapshot(snapshot, _seconds(period) if period else None)
        else:
            usage = from_prometheus(prometheus or settings.cost.prometheus_url, _seconds(window))
    except (PrometheusError, ValueError, OSError) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    rows = costs(usage, settings.cost)
    if json_output:
        print(json.dumps(report(usage, rows), indent=2))
        return

    for table in cost_tables(usage, rows):
        console.print(table)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        err.print(f"[red]bad duration {text!r}[/]: use e.g. 90s, 30m, 24h, 7d")
        raise typer.Exit(2) from None


@app.command()
def load(
    config_file: Annotated[Path, typer.Argument(help="a ghz JSON config (tests/load/*.json)")],
    out: Annotated[Path | None, typer.Option(help="write the ghz-format JSON report here")] = None,
    host: Annotated[str | None, typer.Option(help="override the config's host")] = None,
    slo: Annotated[Path | None, typer.Option(help="SLO file; exit 1 on a breach")] = None,
) -> None:
    """Run a ghz config against the router with real gRPC; write a ghz-format report."""
    import json

    from ops.load import load_config, run

    try:
        config = load_config(config_file.read_text())
        result = asyncio.run(run(config, host))
    except (ValueError, OSError) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    result["name"] = result["name"] or config_file.stem
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    _judge(result, slo, config_file.stem)


@app.command("load-check")
def load_check(
    report: Annotated[Path, typer.Argument(help="a ghz-format JSON report (ghz's or ours)")],
    slo: Annotated[Path, typer.Option(help="SLO file (tests/load/slo.yaml)")],
    name: Annotated[str | None, typer.Option(help="SLO entry (default: the report's name)")] = None,
) -> None:
    """Judge a ghz-format report against its SLO: p95 latency and error rate."""
    import json

    result = json.loads(report.read_text())
    _judge(result, slo, name or result.get("name") or report.stem)


def _judge(result: dict[str, Any], slo_file: Path | None, name: str) -> None:
    from ops.load import Slo, check, slos, summary

    console.print(f"{name}: {summary(result)}")
    if slo_file is None:
        return
    wanted = slos(slo_file.read_text()).get(name, Slo())
    verdict = check(result, wanted.p95_ms, wanted.max_error_rate)
    if not verdict.ok:
        err.print(f"[red]{name}: SLO breached:[/] {'; '.join(verdict.problems)}")
        raise typer.Exit(1)
    console.print(
        f"[green]{name}: within SLO[/] (p95 {verdict.p95_ms:.1f} ms, errors {verdict.error_rate:.1%})"
    )


@app.command()
def certs(out: Annotated[Path, typer.Option(help="folder for the PEM files")] = Path(".certs")) -> None:
    """A local CA and the mesh's certificates (mesh mTLS, router edge, a game client)."""
    from ops.certs import write_local_certs

    for path in write_local_certs(out):
        console.print(f"wrote {path}")


@app.command()
def health(
    address: Annotated[str, typer.Argument(help="host:port of a tiermesh gRPC server")],
    config: ConfigOption = None,
) -> None:
    """Exit 0 when the server's grpc.health.v1 says SERVING (a TLS-aware pod probe)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tiermesh.tls import sync_channel

    settings = _settings(config)
    try:
        with sync_channel(address, settings.security.mesh_tls) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as e:
        err.print(f"[red]{e.code().name}[/]: {e.details()}")
        raise typer.Exit(1) from None
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    console.print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    raise typer.Exit(0 if serving else 1)


@app.command()
def dashboards(
    out: Annotated[Path, typer.Option(help="folder to write into")] = Path("helm/tiermesh/files/dashboards"),
) -> None:
    """Generate the Grafana dashboards (JSON) from code into the Helm chart."""
    from ops.dashboards import write

    for path in write(out):
        console.print(f"wrote {path}")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def stop_on_signals() -> None:
    """SIGTERM, SIGHUP and SIGINT all stop the mesh as Ctrl-C does (KeyboardInterrupt).

    The components run in sessions of their own, so a signal to `tiermesh up` reaches only
    it: left to its default, SIGTERM (a process manager, `timeout`, an IDE's stop button)
    or SIGHUP (the terminal closed) ends it at once and leaves the whole mesh running with
    nobody to stop it. SIGINT is set too, because a shell starts a background job with it
    ignored.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler)


@app.command()
def up(
    config: ConfigOption = None,
    detach: Annotated[bool, typer.Option(help="Return once every component is healthy")] = False,
    demo: Annotated[bool, typer.Option(help="Stream a short NPC conversation once up")] = False,
) -> None:
    """Start the local mesh (Silver, router), wait for health; serve until Ctrl-C."""
    from ops.mesh import LocalMesh, MeshError

    if not detach:
        stop_on_signals()
    settings = _settings(config)
    mesh = LocalMesh(settings, config_path(config))
    try:
        mesh.check_not_running()  # before the `try` whose `finally` stops the mesh
    except MeshError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    started = False
    try:
        with console.status("starting the local mesh (Silver loads its model: ~30-60 s)…"):
            mesh.up(stop_if_unfinished=False)
        started = True
        console.print(f"[green]mesh up[/]: router on {settings.router.listen}; logs in {mesh.run_dir}/logs")
        if demo:
            from ops.demo import run_demo

            asyncio.run(run_demo(settings.router.listen, console, frozenset(settings.router.tiers)))
        if detach:
            return
        console.print("serving; Ctrl-C stops the mesh")
        while mesh.running():
            time.sleep(1.0)
        err.print("[red]a component exited[/]")
        raise typer.Exit(1)
    except MeshError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if not started:
            err.print("stopped while starting")
    finally:
        if not (detach and started):
            # A second Ctrl-C must not cut the stop short: `down` is bounded on its own.
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            stopped = mesh.down()
            console.print(f"stopped: {', '.join(map(str, stopped))}" if stopped else "nothing was started")


@app.command()
def down(config: ConfigOption = None) -> None:
    """Stop the local mesh started by `tiermesh up`."""
    from ops.mesh import LocalMesh

    stopped = LocalMesh(_settings(config), config_path(config)).down()
    console.print(f"stopped: {', '.join(map(str, stopped))}" if stopped else "nothing was running")


@app.command()
def generate(
    prompt: str,
    npc: Annotated[str, typer.Option(help="npc_id; selects the configured persona")] = "guard-1",
    task: Annotated[str, typer.Option(help="intent | bark | dialogue | longform")] = "dialogue",
    max_tokens: Annotated[int, typer.Option(help="0: the task's default")] = 0,
    timeout: Annotated[float, typer.Option(help="gRPC deadline, seconds")] = 30.0,
    temperature: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    persona: Annotated[str, typer.Option(help="system text overriding the persona")] = "",
    tools: Annotated[
        str, typer.Option(help="default | none | auto | required: may the NPC look at the game world first")
    ] = "default",
    fresh: Annotated[bool, typer.Option(help="bypass the router's caches")] = False,
    address: Annotated[str, typer.Option(help="router address")] = "127.0.0.1:50051",
) -> None:
    """Stream one reply from the router to the terminal (tool events on stderr)."""
    from rich.markup import escape

    from ops import client
    from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

    if task not in client.TASKS:
        err.print(f"[red]unknown task {task!r}[/]: one of {', '.join(client.TASKS)}")
        raise typer.Exit(2)
    if tools not in client.TOOL_CHOICES:
        err.print(f"[red]unknown tool choice {tools!r}[/]: one of {', '.join(client.TOOL_CHOICES)}")
        raise typer.Exit(2)
    sampling = mesh_pb2.SamplingOptions(temperature=temperature, seed=seed)
    request = mesh_pb2.GenerateRequest(
        npc_id=npc,
        prompt=prompt,
        task=client.TASKS[task],
        max_tokens=max_tokens,
        sampling=sampling,
        persona=persona,
        tool_choice=client.TOOL_CHOICES[tools],
        bypass_cache=fresh,
    )

    async def run() -> client.Reply:
        async with client.channel(address) as channel:
            return await client.collect(
                mesh_pb2_grpc.MeshStub(channel),
                request,
                timeout,
                on_text=lambda text: print(text, end="", flush=True),
                # A tool's result is the game's text: escaped, not read as markup.
                on_tool=lambda event: err.print(f"[dim]tool: {escape(client.tool_line(event))}[/]"),
            )

    try:
        reply = asyncio.run(run())
    except grpc.aio.AioRpcError as e:
        print(file=sys.stderr)
        err.print(f"[red]{e.code().name}[/]: {e.details()}")
        raise typer.Exit(1) from None
    print()
    err.print(
        f"[dim]tier={reply.tier} ttft={reply.ttft_s * 1000:.0f}ms "
        f"total={reply.total_s * 1000:.0f}ms tokens={reply.usage.completion_tokens} "
        f"finish={reply.finish_reason}[/]"
    )


evaluate_app = typer.Typer(help="Measure the mesh's answers against labelled sets.")
app.add_typer(evaluate_app, name="eval")


@evaluate_app.command("intents")
def eval_intents(
    split: Annotated[str, typer.Option(help="dev | val | held_out | all")] = "all",
    address: Annotated[str, typer.Option(help="router address")] = "127.0.0.1:50051",
    deadline: Annotated[float, typer.Option(help="each call's gRPC deadline, seconds")] = 2.0,
    path: Annotated[Path, typer.Option("--set", help="the labelled set")] = Path("eval/intents.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Accuracy, per-label recall, confusion and latency of intents through the router
    (cache bypassed, one call at a time)."""
    import json

    from ops import client, evaluate
    from tiermesh.v1 import mesh_pb2_grpc

    if split not in get_args(evaluate.Split):
        err.print(f"[red]unknown split {split!r}[/]: dev, val, held_out or all")
        raise typer.Exit(2)
    situations = evaluate.load_set(path, split)  # type: ignore[arg-type]

    async def run() -> evaluate.Report:
        async with client.channel(address) as channel:
            stub: MeshAsyncStub = mesh_pb2_grpc.MeshStub(channel)
            ask = evaluate.router_asker(stub, deadline)
            return evaluate.Report(await evaluate.run(ask, situations))

    report = asyncio.run(run())
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))


if __name__ == "__main__":
    app()
