"""The identifier format shared by npc_id, session_id and persona names."""

import re

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None
