"""The daemon's Lua scripts, one ``.lua`` file each, read by :func:`source`.

Every script runs on one room's keys (one hash tag: a Redis Cluster keeps them in one slot), except the
callback script, which applies a batch of callbacks -- several rooms, or on a Redis Cluster the rooms of one
slot -- in one run (see ``store/batch.py``).
Each file opens with what it takes (``KEYS``, ``ARGV``) and returns.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _read(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def source(name: str, **constants: object) -> str:
    """The script ``name`` (``scripts/<name>.lua``), with ``$NAME`` placeholders filled from ``constants``.

    Raises FileNotFoundError for a script that does not exist, KeyError for a constant it has no place for.
    """
    text = _read(name)
    for key, value in constants.items():
        if f"${key}" not in text:
            raise KeyError(f"{name}.lua has no ${key}")
        text = text.replace(f"${key}", str(value))
    return text
