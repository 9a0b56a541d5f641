"""The `tiermesh` command."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console

from tiermesh.config import Settings, config_path, load_settings

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


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def router(config: ConfigOption = None) -> None:
    """Serve tiermesh.v1.Mesh (the router) in the foreground."""
    from router.app import serve

    settings = _settings(config)
    _logging()
    asyncio.run(serve(settings))


@app.command()
def silver(config: ConfigOption = None) -> None:
    """Serve the Silver tier (vLLM in-process) in the foreground."""
    from services.silver.server import serve

    settings = _settings(config)
    _logging()
    asyncio.run(serve(settings))


@app.command()
def bronze(config: ConfigOption = None) -> None:
    """Serve the Bronze bridge (SageMaker async endpoint) in the foreground."""
    from services.bronze.server import serve

    settings = _settings(config)
    _logging()
    asyncio.run(serve(settings))


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

    from tiermesh.validate import TIERS
    from tiermesh.validate import validate as run

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
def up(
    config: ConfigOption = None,
    detach: Annotated[bool, typer.Option(help="Return once every component is healthy")] = False,
    demo: Annotated[bool, typer.Option(help="Stream a short NPC conversation once up")] = False,
) -> None:
    """Start the local mesh (Silver, router), wait for health; serve until Ctrl-C."""
    from tiermesh.mesh import LocalMesh, MeshError

    settings = _settings(config)
    mesh = LocalMesh(settings, config_path(config))
    with console.status("starting the local mesh (Silver loads its model: ~30-60 s)…"):
        try:
            mesh.up()
        except MeshError as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(1) from None
    console.print(f"[green]mesh up[/]: router on {settings.router.listen}; logs in {mesh.run_dir}/logs")
    try:
        if demo:
            from tiermesh.demo import run_demo

            asyncio.run(run_demo(settings.router.listen, console, frozenset(settings.router.tiers)))
        if detach:
            return
        console.print("serving; Ctrl-C stops the mesh")
        while mesh.running():
            time.sleep(1.0)
        err.print("[red]a component exited[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        if not detach:
            console.print(f"stopped: {', '.join(mesh.down())}")


@app.command()
def down(config: ConfigOption = None) -> None:
    """Stop the local mesh started by `tiermesh up`."""
    from tiermesh.mesh import LocalMesh

    stopped = LocalMesh(_settings(config), config_path(config)).down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


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
    address: Annotated[str, typer.Option(help="router address")] = "127.0.0.1:50051",
) -> None:
    """Stream one reply from the router to the terminal."""
    from tiermesh import client
    from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

    if task not in client.TASKS:
        err.print(f"[red]unknown task {task!r}[/]: one of {', '.join(client.TASKS)}")
        raise typer.Exit(2)
    sampling = mesh_pb2.SamplingOptions(temperature=temperature, seed=seed)
    request = mesh_pb2.GenerateRequest(
        npc_id=npc,
        prompt=prompt,
        task=client.TASKS[task],
        max_tokens=max_tokens,
        sampling=sampling,
        persona=persona,
    )

    async def run() -> client.Reply:
        async with client.channel(address) as channel:
            return await client.collect(
                mesh_pb2_grpc.MeshStub(channel),
                request,
                timeout,
                on_text=lambda text: print(text, end="", flush=True),
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


if __name__ == "__main__":
    app()
