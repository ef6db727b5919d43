"""Run the real ``orchestrator run`` in a subprocess, as an operator would, and read its logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.support.redis_server import free_port


class Daemon:
    """``python -m orchestrator run`` on a free port, JSON logs to a file; ``terminate()`` sends SIGTERM."""

    def __init__(
        self, env: dict[str, str] | None = None, args: list[str] | None = None, *, nofile: int | None = None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self._env = {**clean, **(env or {})}
        # Each daemon its own callback journal, as each replica of a deployment has (one process per journal
        # is enforced).
        self._env.setdefault(
            "ORCH_CALLBACKS__JOURNAL_PATH", tempfile.mkdtemp(prefix="orch-journal-") + "/j.jsonl"
        )
        self._args = args or []
        self._nofile = nofile  # the file descriptor limit the process runs under (as a container's ulimit)
        self._log = Path(tempfile.mkstemp(prefix="orch-daemon-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> Daemon:
        with self._log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    "run",
                    "--port",
                    str(self.port),
                    "--log-format",
                    "json",
                    *self._args,
                ],
                env=self._env,
                preexec_fn=self._limit_files if self._nofile else None,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"daemon not up within {timeout_s}s:\n{self.output()}")

    def _limit_files(self) -> None:
        import resource

        assert self._nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self._nofile, self._nofile))

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.unlink(missing_ok=True)
