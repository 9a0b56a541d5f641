"""A process group's members, read from /proc. The local mesh starts each component in a
session of its own, so a component leads a group that holds its engine's processes too
(Triton and its model stubs, vLLM's engine core): the mesh's stop watches the group, and
a component's own stop is done only once the rest of its group is gone."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Process states of one that has exited and awaits its parent's reaping.
EXITED = ("Z", "X")
# What `end_own_group` logs when it had to kill: a stop that did is not a clean one
# (ops/stop_check.py looks for it).
KILLED_STRAGGLERS = "killed processes of its group that outlived its stop"
# How long a killed straggler may take to exit: it needs the CPU once more to do so.
KILL_TAKES_S = 2.0
# How long the children of killed stragglers get to follow them out on their own.
FOLLOW_S = 0.5


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces): the
    state first, then the parent, the process group… (proc(5), from field 3)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def group_members(pid: int) -> dict[int, str]:
    """The processes of the group `pid` leads, each with its state (proc(5))."""
    return {member: fields[0] for member, fields in _group(pid).items()}


def _group(pid: int) -> dict[int, list[str]]:
    """The processes of the group `pid` leads, each with its stat fields."""
    members = {}
    for process in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = proc_stat(int(process.name))
            if int(fields[2]) == pid:  # the process group
                members[int(process.name)] = fields
    return members


def stragglers(group: int) -> dict[int, int]:
    """The processes of `group` still running that are not this one's own children, each
    with its parent: what this process's exit would leave behind. Its own children are
    its to end (and some end only with it: multiprocessing's resource tracker reads until
    its parent exits)."""
    me = os.getpid()
    return {
        pid: int(fields[1])
        for pid, fields in _group(group).items()
        if pid != me and int(fields[1]) != me and fields[0] not in EXITED
    }


def end_own_group(grace_s: float, poll_s: float = 0.05) -> list[int]:
    """Wait up to `grace_s` for the stragglers of the group this process leads to exit,
    then kill what is left and wait for it to exit; the pids killed.

    An engine's processes may outlive the engine's own exit: Triton gives up on a model
    still unloading at its exit timeout, and that model's stub runs on until it notices
    Triton is gone. Left to the mesh, such a straggler is killed after the leader's exit
    as one left behind; waited for here, the component's exit is its whole stop. Nothing
    is done when this process leads no group (started from a shell, a test): the group
    is then its starter's, not its own.

    Only the stragglers whose parent is not one are killed at first. Their children get
    a moment to follow them out on their own, as the group got after its leader: a
    stub's resource tracker, which removes the shared memory its parent registered once
    it sees its parent gone, would leave that memory behind if killed beside it.
    """
    group = os.getpgrp()
    if group != os.getpid():
        return []
    started = time.monotonic()
    waited_for = stragglers(group)
    left = _stragglers_after(group, waited_for, grace_s, poll_s)
    if waited_for and not left:
        took = time.monotonic() - started
        log.info("waited %.2f s for %d processes of its group to exit", took, len(waited_for))
    if not left:
        return []
    roots = [pid for pid, parent in left.items() if parent not in left]
    named = {pid: command(pid) for pid in left}
    killed = _kill(roots, poll_s)
    followers = _stragglers_after(group, stragglers(group), FOLLOW_S, poll_s)
    killed += _kill(list(followers), poll_s)
    named = {pid: named.get(pid) or command(pid) for pid in killed}
    log.warning("%s by %.1f s: %s", KILLED_STRAGGLERS, grace_s, named)
    return killed


def _stragglers_after(group: int, now: dict[int, int], wait_s: float, poll_s: float) -> dict[int, int]:
    """The stragglers still there once `now` (the group's at this moment) have had up to
    `wait_s` to exit."""
    deadline = time.monotonic() + wait_s
    while now and time.monotonic() < deadline:
        time.sleep(poll_s)
        now = stragglers(group)
    return now


def _kill(pids: list[int], poll_s: float) -> list[int]:
    """SIGKILL `pids` and wait for them to have exited; those that were still there."""
    killed = []
    for pid in filter(running, pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    _wait_exited(killed, KILL_TAKES_S, poll_s)
    return killed


def _wait_exited(pids: list[int], timeout_s: float, poll_s: float) -> None:
    """Wait up to `timeout_s` for `pids` to have exited. A SIGKILL is not an exit: the
    killed process exits only once it runs again, and freeing its memory is part of its
    exit; until then /proc shows it running, and a check right after the stop would
    find it left behind."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(running(pid) for pid in pids):
        time.sleep(poll_s)


def running(pid: int) -> bool:
    """Whether `pid` is there and has not exited (a zombie awaiting its reaping has)."""
    try:
        return proc_stat(pid)[0] not in EXITED
    except (OSError, IndexError):
        return False


def command(pid: int) -> str:
    """A process's command line, shortened, for a log line ("?" once it is gone)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return b" ".join(words).decode(errors="replace").strip()[:160]
