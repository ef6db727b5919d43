"""Livestream orchestration daemon: keeps virtual-human live rooms on vendor clouds live, around the clock."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("livestream-orchestrator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
