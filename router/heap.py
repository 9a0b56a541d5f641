"""The router's heap on transparent huge pages (`data_path.huge_page_heap`).

A call's first token waits on one request's Python run cold (docs/router.md): code and
objects the previous request left in no cache and no TLB. On a virtual machine a TLB miss
walks two page tables, the guest's and the host's, so those misses are a share of that
time (bench/results/proxy.md measures a router with and without this, side by side).
Python's own allocator maps 256 KiB arenas of 4 KiB pages; with `PYTHONMALLOC=malloc`
objects come from glibc's heap instead, which `glibc.malloc.hugetlb=1` asks the kernel to
back with 2 MiB pages (madvise, so it works where THP is `madvise` or `always`; glibc
before 2.35 and THP `never` ignore it). Both are read when a process starts, so the
router starts itself again, once, with them set; its workers inherit them.
"""

from __future__ import annotations

import os
import sys

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_page_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with Python's objects on glibc's heap and that heap on huge pages (other
    glibc tunables kept)."""
    tunables = [
        t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")
    ]
    return {**env, "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": ":".join([*tunables, HUGE_PAGE_TUNABLE])}


def on_huge_pages() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return os.environ.get("PYTHONMALLOC") == "malloc" and HUGE_PAGE_TUNABLE in tunables


def restart_on_huge_pages() -> None:
    """Replace this process with the same command on a huge-page heap (same pid, so a
    supervisor sees nothing); returns at once when it already runs on one."""
    if on_huge_pages():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], huge_page_env(dict(os.environ)))
