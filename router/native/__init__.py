"""C parts, built with cffi against Debian's libraries on first use (`make setup`
installs the headers and a compiler)."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cffi

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Built in front of the router's C parts: what they share (buffers, events, draining).
COMMON = HERE / "h2common.c"


def build_dir() -> Path:
    """Where compiled modules go: $TIERMESH_NATIVE_DIR (a read-only image builds them
    ahead into a writable place), else the checkout's .run/native/."""
    return Path(os.environ.get("TIERMESH_NATIVE_DIR") or ROOT / ".run" / "native")


def declarations(header: Path) -> str:
    """A header's declarations as cffi reads them: its text without the preprocessor's
    lines, so that the header is the one place they are written."""
    return "\n".join(line for line in header.read_text().splitlines() if not line.lstrip().startswith("#"))


def load(prefix: str, sources: Sequence[Path], header: Path, libraries: list[str]) -> Any:
    """The compiled module of `sources` (built as one, in order), declared to Python by
    `header`, built on first use under a name that changes with its source and
    declarations (a stale build is never loaded)."""
    cdef = declarations(header)
    text = "\n".join(source.read_text() for source in [*sources, header])
    name = f"_{prefix}_{hashlib.sha256((cdef + text).encode()).hexdigest()[:12]}"
    build = build_dir()
    build.mkdir(parents=True, exist_ok=True)
    if str(build) not in sys.path:
        sys.path.insert(0, str(build))
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    # Built in a private folder and moved in whole: router workers starting together
    # must not load each other's half-written module.
    with tempfile.TemporaryDirectory(dir=build) as private:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        ffi.set_source(
            name,
            "\n".join(source.read_text() for source in sources),
            libraries=libraries,
            include_dirs=[str(HERE)],
        )
        try:
            built = Path(ffi.compile(tmpdir=private))
        except (cffi.VerificationError, OSError) as e:
            raise RuntimeError(
                f"cannot build {sources[-1].name} ({e}): it needs a C compiler and libnghttp2-dev "
                "(`make setup`); or set router.data_path.edge and tier_client to grpc"
            ) from e
        os.replace(built, build / built.name)
    return importlib.import_module(name)
