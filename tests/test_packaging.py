"""Packaging: the declared dependency floors and the installed console script."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["orchestrator"] == "orchestrator.cli:main"
    reqs = {}
    for req in project["dependencies"]:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", req).groups()  # type: ignore[union-attr]
        reqs[name.lower()] = spec
    return reqs


def _floor(spec: str) -> tuple[int, ...]:
    found = re.search(r">=\s*([\d.]+)", spec)
    assert found, spec
    return tuple(int(p) for p in found.group(1).split("."))


def test_dependency_floors() -> None:
    reqs = _requirements()
    assert _floor(reqs["aiohttp"]) >= (3, 13, 4)  # request-parsing CVEs below
    assert _floor(reqs["apscheduler"]) >= (3, 11) and "<4" in reqs["apscheduler"]
    assert _floor(reqs["redis"]) >= (5,)
    assert _floor(reqs["pydantic"]) >= (2,)
    assert {"pydantic-settings", "structlog"} <= set(reqs)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "orchestrator"
    assert script.is_file()
    result = subprocess.run([str(script), "version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip()
