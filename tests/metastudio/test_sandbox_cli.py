"""``orchestrator sandbox metastudio`` runs standalone and prints what to configure."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import aiohttp

from orchestrator.providers.metastudio.client import AkSkCredentials, MetaStudioClient
from orchestrator.providers.metastudio.models import JobState, StartJobRequest
from tests.support.redis_server import free_port


async def test_standalone_sandbox_serves_the_printed_room() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "sandbox",
            "metastudio",
            "--port",
            str(port),
            "--ak",
            "MYAK",
            "--sk",
            "my-sk",
            "--project-id",
            "proj-1",
            "--speed",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(9)]
        text = "".join(lines)
        endpoint = re.search(r"endpoint:\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        room = re.search(r"room id:\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        assert endpoint == f"http://127.0.0.1:{port}" and "ORCH_METASTUDIO__PROJECT_ID=proj-1" in text
        async with aiohttp.ClientSession() as session:
            client = MetaStudioClient(
                session, base_url=endpoint, credentials=AkSkCredentials("MYAK", "my-sk", "proj-1")
            )
            job = await client.start_job(room, StartJobRequest(output_urls=["rtmp://x/live"]))
            assert (await client.show_job(room, job.job_id)).state in (JobState.WAITING, JobState.PROCESSING)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
