"""One log format for every tiermesh process (stdlib only: Gold runs in its own venv)."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    """INFO, or $TIERMESH_LOG_LEVEL (DEBUG shows, for one, each call's tier plan)."""
    level = os.environ.get("TIERMESH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
