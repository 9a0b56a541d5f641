"""The router's data path at several revisions, side by side in one run.

`bench.proxy` measures every path there is and takes about half an hour; this asks one
question in minutes: did a change make the shipped router's data path slower? Each
revision gets a git worktree under .run/revisions/ with its protocol stubs and native
data plane built by this checkout's venv, and its own router; the working tree is a
path too ("this checkout"). nginx and the bare backend run beside them, and rounds
interleave every path, so each comparison is between figures minutes apart at most.

Per round and path: h2load's burst (one call at a time, and 64 at once on one
connection), with the router's CPU time per call over the one-at-a-time burst, and the
paced client's time to first token and per-token trip (the same backends and clients as
bench.proxy). Reported: medians of rounds, and the median of each round's difference or
ratio. CPU per call moves far less from round to round than latency on a shared machine:
it tells a change's cost where latency cannot.

    python -m bench.proxy_revisions REV [REV ...] [--rounds 5] [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

from bench.paths import MESSAGES, cpu_s, router_config, running, settle, workspace
from bench.proxy import differences, paired, ratio
from bench.report import median, table, write
from bench.stream_clients import check, h2load, paced_client

BACKEND, PACED = "127.0.0.1:7301", "127.0.0.1:7311"
NGINX, NGINX_PACED = "127.0.0.1:7302", "127.0.0.1:7312"
REDIS_PORT = 7330
HERE = "this checkout"


def describe_here() -> str:
    """This checkout's commit, marked when the working tree differs from it."""
    return subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
    ).stdout.strip()


TREES = Path(".run/revisions")
Samples = dict[str, dict[str, list[float]]]
# Measure: its label and format, in the round-by-round comparison.
COMPARED = {
    "paced_ttft_ms": ("first token ms", "+.3f"),
    "paced_token_trip_ms": ("per token ms", "+.3f"),
    "cpu_us_per_call": ("CPU µs per call", "+.0f"),
}
HEADERS = (
    "path", "burst ms per call", "vs nginx", "router CPU µs per call", "tokens/s, 64 streams",
    "vs nginx", "first token ms (paced)", "added", "added per token",
)  # fmt: skip


def checkout(revision: str) -> tuple[str, Path]:
    """A worktree of `revision` with what `make setup` builds that the router imports:
    the protocol stubs and the native data plane."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", f"{revision}^{{commit}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = TREES / sha
    if not tree.exists():
        add = ["git", "worktree", "add", "--detach", str(tree), sha]
        subprocess.run(add, check=True, capture_output=True)
    protos = [str(p.relative_to(tree / "protos")) for p in (tree / "protos" / "tiermesh").rglob("*.proto")]
    protoc = [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--python_out=.", "--grpc_python_out=."]
    subprocess.run([*protoc, *sorted(protos)], cwd=tree, check=True)
    for package in ("tiermesh/v1", "tiermesh/tier", "tiermesh/tier/v1"):
        (tree / package / "__init__.py").touch()
    # `make native`'s recipe at that revision: router.native.build from #25 on, before it
    # the modules compiled themselves on first import.
    build = (
        ["-m", "router.native.build"]
        if (tree / "router" / "native" / "build.py").exists()
        else ["-c", "import router.native.edge, router.native.tier"]
    )
    subprocess.run([sys.executable, *build], cwd=tree, check=True)
    return sha, tree.resolve()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("revisions", nargs="+", help="git revisions to compare with this checkout")
    parser.add_argument("--calls", type=int, default=1000, help="h2load calls per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paced-calls", type=int, default=60, help="paced calls per path and round")
    parser.add_argument("--name", default="proxy-revisions", help="result file name in bench/results/")
    args = parser.parse_args()
    args.here = describe_here()
    trees = dict(checkout(revision) for revision in args.revisions)
    work, body = workspace("proxy-revisions")
    routers = {HERE: None} | {f"router at {sha}": tree for sha, tree in trees.items()}
    burst = {"backend": BACKEND, "nginx": NGINX}
    paced = {"backend": PACED, "nginx": NGINX_PACED}
    samples: Samples = {}

    def sample(path: str, key: str, value: float) -> None:
        samples.setdefault(path, {}).setdefault(key, []).append(value)

    with running(work) as processes:
        processes.backend("backend", BACKEND)
        processes.backend("paced backend", PACED, pace_ms=5)
        processes.nginx({NGINX: BACKEND, NGINX_PACED: PACED})
        redis = processes.redis(REDIS_PORT)
        for number, (name, tree) in enumerate(routers.items()):
            burst[name], paced[name] = f"127.0.0.1:{7340 + number}", f"127.0.0.1:{7360 + number}"
            processes.router(name, router_config(burst[name], BACKEND, redis_url=redis), checkout=tree)
            processes.router(f"{name} (paced)", router_config(paced[name], PACED), checkout=tree)
        settle()
        for address in burst.values():
            asyncio.run(check(address))
        for _ in range(args.rounds):
            for name, address in burst.items():
                pid = processes.pid(name) if name in routers else None
                used = cpu_s(pid) if pid else 0.0
                sample(name, "burst_ms", h2load(address, body, args.calls)["mean_ms"])
                if pid:
                    sample(name, "cpu_us_per_call", (cpu_s(pid) - used) / args.calls * 1e6)
                many = h2load(address, body, 2 * args.calls, 1, 64)
                sample(name, "relay_tokens_per_s", many["calls_per_s"] * MESSAGES)
            for name, address in paced.items():
                for key, value in asyncio.run(paced_client(address, args.paced_calls)).items():
                    sample(name, f"paced_{key}", value)
    markdown = report(samples, list(routers), args)
    write(args.name, {"revisions": list(trees), "args": vars(args), "samples": samples}, markdown)
    print(markdown)


def report(samples: Samples, routers: list[str], args: argparse.Namespace) -> str:
    rows: list[list[object]] = []
    for path in ["backend", "nginx", *routers]:
        rows.append([
            path,
            f"{median(samples[path]['burst_ms']):.2f}",
            f"{ratio(samples, path, 'burst_ms'):.2f}×",
            f"{median(samples[path]['cpu_us_per_call']):.0f}" if path in routers else "",
            f"{median(samples[path]['relay_tokens_per_s']):,.0f}",
            f"{ratio(samples, path, 'relay_tokens_per_s'):.2f}×",
            f"{median(samples[path]['paced_ttft_ms']):.3f}",
            f"{paired(samples, path, 'paced_ttft_ms'):+.3f}",
            f"{paired(samples, path, 'paced_token_trip_ms'):+.3f}",
        ])  # fmt: skip
    spread = {
        path: (min(each), max(each))
        for path in routers
        if (each := differences(samples, path, "paced_ttft_ms", "backend"))
    }
    lines = [
        "# The router's data path across revisions",
        "",
        f"`python -m bench.proxy_revisions {' '.join(args.revisions)} --rounds {args.rounds} "
        f"--calls {args.calls} --paced-calls {args.paced_calls}`: {args.rounds} interleaved rounds, "
        "medians of rounds; ratios and differences are medians of each round's. The same backends, "
        f"nginx and full router pipeline as `bench.proxy`. This checkout: {args.here}.",
        "",
        table(HEADERS, rows),
        "",
        "First token added, lowest and highest round: "
        + "; ".join(f"{path} {low:+.3f}…{high:+.3f} ms" for path, (low, high) in spread.items())
        + ".",
        "",
        f"Against the router at {args.revisions[0]}, each round's difference (median, and every round):",
        "",
    ]
    base = routers[1]
    for path in (p for p in routers if p != base):
        said = []
        for key, (label, form) in COMPARED.items():
            values = differences(samples, path, key, base)
            rounds = ", ".join(format(v, form) for v in values)
            said.append(f"{label} {format(median(values), form)} ({rounds})")
        lines.append(f"- {path}: " + "; ".join(said))

    return "\n".join(lines)


if __name__ == "__main__":
    main()
