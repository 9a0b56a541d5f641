"""Content keys: what makes two requests ask for the same text.

Bronze stores finished results under this key; the router looks it up before
generating, so content pre-warmed by a job is served instantly.
"""

from __future__ import annotations

import hashlib
import re

_SPACES = re.compile(r"\s+")


def content_key(task: str, npc_id: str, system: str, prompt: str) -> str:
    normalized = _SPACES.sub(" ", prompt.strip().lower())
    digest = hashlib.sha256("\0".join((task, npc_id, system, normalized)).encode()).hexdigest()
    return f"{task}/{digest}"
