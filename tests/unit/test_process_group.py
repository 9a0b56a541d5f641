"""A component's stop waits for the stragglers of its process group
(tiermesh/process_group.py), in real processes: a leader started in a session of its
own, as the mesh starts each component, with an orphaned grandchild standing in for an
engine's worker and a child of its own for its resource tracker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

from tiermesh.process_group import KILLED_STRAGGLERS

# The leader: starts an engine that leaves a worker in its group when it exits (as
# Triton leaves a model stub it gave up on) and a child of its own (as multiprocessing's
# resource tracker is Gold's), ends its group with a grace, and reports.
LEADER = textwrap.dedent(
    """
    import json, logging, os, shlex, subprocess, sys, time
    from tiermesh.process_group import end_own_group, proc_stat, stragglers
    logging.basicConfig(level=logging.WARNING)
    worker_s, grace_s, worker_mib = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    ready = f"/tmp/tiermesh-straggler-{os.getpid()}"
    region = f"tiermesh-straggler-{os.getpid()}"
    if worker_mib < 0:  # a worker with shared memory: its resource tracker is its child
        held = (
            "from multiprocessing import shared_memory; "
            f"m = shared_memory.SharedMemory({region!r}, create=True, size=4096); "
            f"open({ready!r}, 'w').close()"
        )
    else:  # a worker whose exit takes a while: its memory is freed as it exits
        held = f"b = b'x' * ({worker_mib} << 20); open({ready!r}, 'w').close()"
    if worker_mib:
        run = shlex.join([sys.executable, "-c", f"{held}; import time; time.sleep({worker_s})"])
    else:
        run = f"sleep {worker_s}"
    engine = subprocess.run(
        ["sh", "-c", f"{run} >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )
    worker = int(engine.stdout)
    own = subprocess.Popen(["sleep", "60"])
    time.sleep(0.1)
    while worker_mib and not os.path.exists(ready):
        time.sleep(0.01)
    started = time.monotonic()
    killed = end_own_group(grace_s)
    took = time.monotonic() - started
    states = []
    for pid in killed:
        try:
            states.append(proc_stat(pid)[0])
        except OSError:
            states.append("gone")
    if worker_mib:
        os.remove(ready)
    left = list(stragglers(os.getpgrp()))
    region_left = os.path.exists(f"/dev/shm/{region}")
    own_ran_on = own.poll() is None
    own.kill()
    own.wait()
    print(json.dumps({"killed": killed, "worker": worker, "took": took, "left": left,
                      "states": states, "own_ran_on": own_ran_on, "region_left": region_left}))
    """
)


def lead(
    child_s: float, grace_s: float, own_session: bool = True, child_mib: int = 0
) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-c", LEADER, str(child_s), str(grace_s), str(child_mib)],
        capture_output=True, text=True, timeout=30, check=True, start_new_session=own_session,
        cwd=os.getcwd(),
    )  # fmt: skip
    return json.loads(done.stdout), done.stderr


def test_a_leader_waits_for_a_straggler_that_exits_within_the_grace() -> None:
    report, log = lead(child_s=0.5, grace_s=5.0)
    assert report["killed"] == []
    assert 0.2 < report["took"] < 5.0  # waited for the worker, not the whole grace
    assert report["own_ran_on"], "its own child is its own to end, not a straggler"
    assert KILLED_STRAGGLERS not in log


def test_a_straggler_that_outlives_the_grace_is_killed_and_logged() -> None:
    report, log = lead(child_s=60, grace_s=0.3)
    assert report["killed"] == [report["worker"]]
    assert report["left"] == []
    assert report["own_ran_on"]
    assert KILLED_STRAGGLERS in log


def test_a_killed_straggler_has_exited_when_the_stop_returns() -> None:
    # A SIGKILL is not an exit: one that frees 256 MiB as it exits shows as running for
    # milliseconds after its kill, and a stop that returned then would leave it behind.
    report, _ = lead(child_s=60, grace_s=0.3, child_mib=256)
    assert report["killed"] == [report["worker"]]
    assert set(report["states"]) <= {"Z", "X", "gone"}, report["states"]
    assert report["left"] == []


def test_a_killed_stragglers_resource_tracker_cleans_up_before_it_would_be_killed() -> None:
    # The worker's multiprocessing resource tracker is the worker's child, a straggler too:
    # killed beside the worker, it would leave the worker's shared memory in /dev/shm.
    report, log = lead(child_s=60, grace_s=0.3, child_mib=-1)
    assert report["killed"] == [report["worker"]], log
    assert not report["region_left"]
    assert report["left"] == []


def test_a_process_that_leads_no_group_kills_nothing() -> None:
    # Started from a shell or a test, its group is its starter's: its siblings are not its own.
    report, _ = lead(child_s=0.5, grace_s=0.3, own_session=False)
    assert report["killed"] == []
    assert report["took"] < 0.3
