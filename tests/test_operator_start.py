"""The daemon's first minutes as an operator sees them: Redis missing at start, crash output, log noise."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.redis_server import RedisServer, free_port


def _readyz(daemon: Daemon) -> int:
    try:
        with urllib.request.urlopen(f"{daemon.base_url}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _lines(output: str) -> list[dict[str, object]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        parsed.append(json.loads(line))  # every line the process wrote is a JSON log line
    return parsed


@pytest.mark.slow
@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",  # down
        "redis://no-such-host.invalid:6379/0",  # unknown host
        "redis://:wrong-password-123@127.0.0.1:{port}/0",  # wrong password
    ],
)
def test_redis_not_there_at_start_is_one_line_then_retries_until_it_is(url: str, tmp_path: Path) -> None:
    port = free_port()
    password = "wrong-password-123" in url
    server = RedisServer(port, ["--requirepass", "the-real-password"] if password else None)
    daemon = Daemon(
        env={
            "ORCH_REDIS__URL": url.format(port=port),
            "ORCH_REDIS__READINESS_TIMEOUT_S": "0.5",
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
        }
    )
    try:
        if password:
            server.start()
        with daemon:
            time.sleep(2.0)
            assert daemon.proc is not None and daemon.proc.poll() is None  # still running
            assert _readyz(daemon) == 503
            if url.startswith("redis://127.0.0.1"):
                server.start()  # Redis comes
                deadline = time.monotonic() + 15
                while _readyz(daemon) != 200 and not password:
                    assert time.monotonic() < deadline, daemon.output()[-2000:]
                    time.sleep(0.2)
            output = daemon.output()
    finally:
        server.close()
    lines = _lines(output)
    unreachable = [line for line in lines if str(line["event"]).startswith("redis unreachable at start")]
    assert len(unreachable) == 1 and unreachable[0]["level"] == "warning"
    assert not [line for line in lines if "exception" in line or line["level"] in ("error", "critical")], [
        line for line in lines if "exception" in line or line["level"] in ("error", "critical")
    ][:3]
    assert "wrong-password-123" not in output


def test_an_uncaught_exception_is_a_redacted_json_line(tmp_path: Path) -> None:
    script = (
        "import threading\n"
        "from orchestrator.logging import Redactor, configure_logging\n"
        "from orchestrator.settings import LoggingSettings\n"
        "configure_logging(LoggingSettings(format='json'), Redactor(values=['crash-secret-value-1']))\n"
        "t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()\n"
        "raise RuntimeError('boom with crash-secret-value-1 inside')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = _lines(result.stdout + result.stderr)
    assert [line["event"] for line in lines] == ["uncaught exception", "uncaught exception"]
    assert all(line["level"] == "critical" and "Traceback" in str(line["exception"]) for line in lines)
    assert "crash-secret-value-1" not in result.stdout + result.stderr


def test_apscheduler_job_lines_are_debug(redis_url: str, tmp_path: Path) -> None:
    daemon = Daemon(
        env={
            "ORCH_REDIS__URL": redis_url,
            "ORCH_SCHEDULING__RECONCILE_INTERVAL_S": "0.2",
            "ORCH_SCHEDULING__BOUNDARY_TOLERANCE_S": "0",  # one clock here: boundaries at once
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
        }
    )
    with daemon:
        time.sleep(1.5)  # seven passes
        output = daemon.output()
    assert "Running job" not in output and "executed successfully" not in output
    _lines(output)


def _orchestrator(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_check_config_and_run_tell_the_truth(tmp_path: Path) -> None:
    journal = {"ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "var" / "journal.jsonl")}
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {match: 1}\nnot_a_field: true\n")
    for command in (["check-config"], ["run", "--port", "0"]):
        bad = _orchestrator(*command, env={**journal, "ORCH_INTERACTION__POLICY_FILE": str(policy)})
        assert bad.returncode == 2, bad.stderr
        assert str(policy) in bad.stderr and "not_a_field" in bad.stderr and "Traceback" not in bad.stderr
    # allowed, but said: no admin token, no callback profile, no vendor credentials
    ok = _orchestrator("check-config", env=journal)
    assert ok.returncode == 0, ok.stderr
    for said in ("admin.token is empty", "no callback profile", "MetaStudio credentials incomplete"):
        assert f"warning: {said}" in ok.stderr
    # refused: a journal this user cannot write; an exposed API without a token
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        env = {"ORCH_CALLBACKS__JOURNAL_PATH": str(locked / "sub" / "journal.jsonl")}
        if not __import__("os").access(locked, __import__("os").W_OK):  # root may write anyway
            unwritable = _orchestrator("check-config", env=env)
            assert unwritable.returncode == 2 and "callbacks.journal_path" in unwritable.stderr
    finally:
        locked.chmod(0o700)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    not_a_dir = _orchestrator("check-config", env={"ORCH_CALLBACKS__JOURNAL_PATH": f"{a_file}/journal.jsonl"})
    assert not_a_dir.returncode == 2
    assert f"callbacks.journal_path: {a_file}/journal.jsonl" in not_a_dir.stderr
    exposed = _orchestrator("run", env={**journal, "ORCH_SERVER__HOST": "0.0.0.0"})
    assert (
        exposed.returncode == 2 and "admin.token: empty while the server listens on 0.0.0.0" in exposed.stderr
    )
