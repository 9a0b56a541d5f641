"""Builds the router's C fuzzers (edge, tier) with clang's libFuzzer, AddressSanitizer and
UBSan, replays every regression input, then fuzzes each target for a while, both at once.
A crash fails the run and is kept as a regression input under tests/fuzz/regressions/.
With --record, the run is reported (executions, coverage of the router's C) in
bench/results/.

    python -m fuzz.run --seconds 60                          # make test's smoke
    python -m fuzz.run --seconds 1800 --record bench/results/fuzz   # make fuzz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "router" / "native"
WORK = ROOT / ".run" / "fuzz"
REGRESSIONS = ROOT / "tests" / "fuzz" / "regressions"
TARGETS = {"edge": "h2edge.c", "tier": "h2tier.c"}
SANITIZE = ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined"]
COVERAGE = ["-fsanitize=fuzzer", "-fprofile-instr-generate", "-fcoverage-mapping"]


@dataclass
class Result:
    target: str
    seconds: float
    executions: int
    per_second: int
    edges: int  # libFuzzer's coverage counters (cov:)
    features: int  # ft:
    corpus: int
    crashes: int
    lines_covered: str = ""  # of the target's C file, llvm-cov over the final corpus
    branches_covered: str = ""


def build(target: str, flags: list[str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    source = ROOT / "fuzz" / f"{target}.c"
    subprocess.run(
        ["clang", "-g", "-O1", *flags, f"-I{NATIVE}", str(source), "-lnghttp2", "-o", str(out)], check=True
    )
    return out


def replay(binary: Path, target: str) -> None:
    """Every regression input, once: each must pass."""
    inputs = sorted((REGRESSIONS / target).glob("*"))
    if inputs:
        subprocess.run([str(binary), *map(str, inputs)], check=True, capture_output=True)
    print(f"{target}: {len(inputs)} regression inputs pass")


def fuzz(binary: Path, target: str, seconds: int) -> Result:
    corpus = WORK / "corpus" / target
    crashes = WORK / "crashes" / target
    corpus.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(crashes, ignore_errors=True)
    crashes.mkdir(parents=True)
    started = time.monotonic()
    options = [f"-max_total_time={seconds}", "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"]
    inputs = [corpus, WORK / "seeds" / target, REGRESSIONS / target]
    run = subprocess.run(
        [str(binary), *options, f"-artifact_prefix={crashes}/", *map(str, inputs)],
        capture_output=True,
        text=True,
        check=False,
    )
    log = run.stderr
    (WORK / f"{target}.log").write_text(log)
    found = sorted(crashes.glob("*"))
    for crash in found:  # kept as regression inputs: fix, then commit them
        name = f"{crash.name.split('-')[0]}-{hashlib.sha1(crash.read_bytes()).hexdigest()[:12]}"
        shutil.copy(crash, REGRESSIONS / target / name)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", log, re.M))
    last = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", log)
    edges, features, size = map(int, last[-1]) if last else (0, 0, 0)
    executions = int(stats.get("number_of_executed_units", 0))
    elapsed = time.monotonic() - started
    return Result(
        target, round(elapsed), executions, int(executions / elapsed), edges, features, size, len(found)
    )


def coverage(target: str) -> tuple[str, str]:
    """Line and branch coverage of the target's C file by the final corpus (llvm-cov)."""
    binary = build(target, COVERAGE, WORK / "coverage" / target)
    profile = WORK / "coverage" / f"{target}.profraw"
    corpus = sorted((WORK / "corpus" / target).glob("*"))
    subprocess.run(
        [str(binary), "-runs=0", *map(str, corpus)],
        env={"LLVM_PROFILE_FILE": str(profile)}, capture_output=True, check=False,
    )  # fmt: skip
    merged = profile.with_suffix(".profdata")
    subprocess.run(["llvm-profdata", "merge", "-sparse", str(profile), "-o", str(merged)], check=True)
    report = subprocess.run(
        ["llvm-cov", "report", str(binary), f"-instr-profile={merged}", str(NATIVE / TARGETS[target])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(line for line in report.splitlines() if line.startswith("TOTAL"))
    percents = re.findall(r"(\d+\.\d+)%", row)  # regions, functions, lines, branches
    return f"{percents[2]}%", f"{percents[3]}%" if len(percents) > 3 else ""


def record(results: list[Result], seconds: int, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    rows = "\n".join(
        f"| {r.target} ({TARGETS[r.target]}) | {r.seconds} | {r.executions:,} | {r.per_second:,} | "
        f"{r.edges} | {r.features} | {r.corpus} | {r.lines_covered} | {r.branches_covered} | {r.crashes} |"
        for r in results
    )
    head = "| target | seconds | executions | per second | edges | features | corpus | lines | branches"
    out.with_suffix(".md").write_text(
        f"""# Fuzzing the router's C (`make fuzz FUZZ_SECONDS={seconds}`)

`python -m fuzz.run --seconds {seconds} --record bench/results/fuzz`, {time.strftime("%Y-%m-%d")}, on this
project's 2-vCPU machine: both targets at once, one core each. libFuzzer with AddressSanitizer and
UBSan, seeded with real gRPC exchanges (fuzz/seeds.py), allocations failing where the input says
(fuzz/harness.h). Line and branch coverage: llvm-cov of the target's C file over the final corpus.

{head} | crashes |
|---|---|---|---|---|---|---|---|---|---|
{rows}
"""
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=30, help="per target (both run at once)")
    parser.add_argument("--record", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    if not shutil.which("clang"):
        sys.exit("clang is missing: `make setup` installs Debian's clang and libclang-rt-14-dev")
    binaries = {t: build(t, SANITIZE, WORK / t) for t in TARGETS}
    subprocess.run([sys.executable, "-m", "fuzz.seeds", str(WORK / "seeds")], check=True, cwd=ROOT)
    for target, binary in binaries.items():
        (REGRESSIONS / target).mkdir(parents=True, exist_ok=True)
        replay(binary, target)
    with ThreadPoolExecutor(len(TARGETS)) as pool:
        results = list(pool.map(lambda t: fuzz(binaries[t], t, args.seconds), TARGETS))
    for r in results:
        print(f"{r.target}: {r.executions:,} executions in {r.seconds} s, cov {r.edges}, corpus {r.corpus}, "
              f"crashes {r.crashes}")  # fmt: skip
    if crashed := [r.target for r in results if r.crashes]:
        print(f"CRASH in {crashed}: inputs kept in tests/fuzz/regressions/; logs in .run/fuzz/*.log")
        return 1
    if args.record:
        for r in results:
            r.lines_covered, r.branches_covered = coverage(r.target)
        record(results, args.seconds, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
