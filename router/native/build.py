"""The native plane's build step: its C compiled with cffi against Debian's libnghttp2
(`make native`, which `make setup` runs; python -m router.native.build), declared to
Python by the headers themselves. Importing loads what was built and compiles nothing."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
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


SOURCES = {
    "h2edge": ([COMMON, HERE / "h2edge.c"], HERE / "h2edge.h"),
    "h2tier": ([COMMON, HERE / "h2tier.c"], HERE / "h2tier.h"),
}
LIBRARIES = ["nghttp2"]


def module_name(prefix: str) -> str:
    """The compiled module's name: it changes with its sources and declarations, so a
    stale build is never loaded."""
    sources, header = SOURCES[prefix]
    text = "\n".join(source.read_text() for source in [*sources, header])
    return f"_{prefix}_{hashlib.sha256((declarations(header) + text).encode()).hexdigest()[:12]}"


def load(prefix: str) -> Any:
    """The built module for `prefix` ("h2edge", "h2tier"); importing never compiles."""
    name = module_name(prefix)
    build = build_dir()
    if str(build) not in sys.path:
        sys.path.insert(0, str(build))
    try:
        return importlib.import_module(name)
    except ImportError:
        raise RuntimeError(
            f"the router's C ({prefix}) is not built for these sources: run `make native` "
            f"(python -m router.native.build), or set router.data_path.edge and tier_client to grpc"
        ) from None


def build(prefix: str) -> Path:
    """Compile one module into build_dir() (in a private folder, moved in whole: router
    workers starting together never load a half-written module)."""
    sources, header = SOURCES[prefix]
    name = module_name(prefix)
    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)
    if existing := sorted(target.glob(f"{name}.*.so")) + sorted(target.glob(f"{name}.so")):
        return existing[0]
    with tempfile.TemporaryDirectory(dir=target) as private:
        ffi = cffi.FFI()
        ffi.cdef(declarations(header))
        ffi.set_source(
            name,
            "\n".join(source.read_text() for source in sources),
            libraries=LIBRARIES,
            include_dirs=[str(HERE)],
        )
        try:
            built = Path(ffi.compile(tmpdir=private))
        except (cffi.VerificationError, OSError) as e:
            raise RuntimeError(
                f"cannot build {prefix} ({e}): it needs a C compiler and libnghttp2-dev"
            ) from e
        os.replace(built, target / built.name)
        return target / built.name


if __name__ == "__main__":
    for prefix in SOURCES:
        print(build(prefix))
