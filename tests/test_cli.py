"""The command line explains itself: every command has --help, version prints the version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator import __version__
from orchestrator.cli import build_parser


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("command", "phrase"),
    [
        ((), "Livestream orchestration daemon"),
        (("run",), "shut down gracefully"),
        (("check-config",), "secret masked"),
        (("version",), "version"),
    ],
)
def test_help(command: tuple[str, ...], phrase: str) -> None:
    result = _run(*command, "--help")
    assert result.returncode == 0
    assert phrase in result.stdout.replace("\n", " ").replace("  ", " ")


def test_version() -> None:
    result = _run("version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__ != "0.0.0+unknown"


def test_no_command_is_a_usage_error() -> None:
    result = _run()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


def test_commands_are_registered() -> None:
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert choices is not None
    assert {"run", "check-config", "version"} <= set(choices)


def test_connection_options_go_before_or_after_the_action() -> None:
    from orchestrator.cli import build_parser

    parser = build_parser()
    for argv in (
        ["rooms", "list", "--api", "http://h:1", "--token", "t"],
        ["rooms", "--api", "http://h:1", "--token", "t", "list"],
        ["rooms", "show", "r1", "--api", "http://h:1", "--token", "t"],
        ["schedule", "show", "r1", "--api", "http://h:1", "--token", "t"],
    ):
        args = parser.parse_args(argv)
        assert (args.api, args.token) == ("http://h:1", "t"), argv
    before_only = parser.parse_args(["rooms", "--api", "http://h:2", "list"])
    assert before_only.api == "http://h:2"  # the action's own (absent) option does not overwrite it
