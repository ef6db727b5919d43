"""The image's entry command, run outside Docker the way deploy/Dockerfile runs it.

No Docker engine runs here, so the test does what the Dockerfile does, from the Dockerfile itself: it
installs the package into a fresh prefix (the build stage's ``pip install --prefix``), puts the files the
final stage COPYs where it copies them, creates the WORKDIR owned by the image's user, and runs CMD as that
user (uid/gid from USER), in that working directory, with the ENV the Dockerfile sets plus what
docker-compose.yml requires. The image's absolute paths (/etc/orchestrator, /var/lib/orchestrator) are
placed under a scratch root, and the listening ports moved to free ones; nothing else differs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.redis_server import free_port
from tests.test_deploy import REQUIRED, ROOT

pytestmark = pytest.mark.slow


def _final_stage() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return lines[max(i for i, (n, _) in enumerate(lines) if n == "FROM") :]


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="orch-image-"))
    root.chmod(0o755)  # the image's user must reach it
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _pip_install(prefix: Path, what: str) -> None:
    """``pip install --prefix`` as the build stage does (no dependencies: they are the test environment's)."""
    # --ignore-installed: without it pip uninstalls the test environment's own copy of the package first
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed"]
    argv += ["--prefix", str(prefix), what]
    done = subprocess.run(argv, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _copy_runtime_dependencies(site: Path) -> None:
    """The package's runtime dependencies (and theirs), copied file by file from the test environment
    into ``site``: what the build stage's ``pip install`` puts beside the package. The image's user must
    read them, and the test environment may sit where only root can (a clone in ``mktemp -d``, 0700)."""
    todo, seen = ["livestream-orchestrator"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        if name == "livestream-orchestrator":
            continue  # installed by pip, as the build stage does
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and "__pycache__" not in file.parts:
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


def _http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


#: The image's ``python`` is a system interpreter every user may run (python:3.11-slim's /usr/local/bin);
#: here Debian's, when it is the same minor version (the test environment's may live under /root, 0700).
IMAGE_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin")


def _same_minor(python: str | None) -> bool:
    if python is None:
        return False
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    )
    return out.stdout.strip() == str(tuple(sys.version_info[:2]))


@pytest.mark.skipif(os.geteuid() != 0, reason="running as the image's user needs root to switch users")
@pytest.mark.skipif(
    not _same_minor(IMAGE_PYTHON), reason="no system Python of this minor version for the image's user"
)
def test_the_image_entry_command_runs_as_shipped(scratch: Path, redis_url: str) -> None:
    stage = _final_stage()
    uid, gid = (int(x) for x in dict(stage)["USER"].split(":"))
    env_items = [item for name, arg in stage if name == "ENV" for item in shlex.split(arg)]
    image_env = dict(item.split("=", 1) for item in env_items)
    workdir = dict(stage)["WORKDIR"]
    cmd = yaml.safe_load(dict(stage)["CMD"])

    def inside(path: str) -> Path:  # an absolute path of the image, under the scratch root
        return scratch / path.lstrip("/")

    # The build stage: its COPYs into a source directory, then pip install --prefix (the dependencies are
    # copied from the test environment's site-packages instead of being downloaded again).
    source = scratch / "src"
    source.mkdir()
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source / file)
    shutil.copytree(
        ROOT / "orchestrator", source / "orchestrator", ignore=shutil.ignore_patterns("__pycache__")
    )
    prefix = scratch / "install"
    _pip_install(prefix, str(source))
    # redis-py needs async-timeout below Python 3.11.3 (its own marker); the system interpreter may be older
    # than the test environment's, which therefore lacks it.
    _pip_install(prefix, "async-timeout")
    # The final stage: its COPYs and its RUN's working directory, owned by the image's user.
    for name, arg in stage:
        if name == "COPY" and "--from" not in arg:
            source, target = shlex.split(arg)
            inside(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, inside(target))
    inside(workdir).mkdir(parents=True, exist_ok=True)  # RUN mkdir -p ... && chown
    for directory in (inside(workdir), *inside(workdir).parents):
        if directory == scratch:
            break
        directory.chmod(0o755)
    os.chown(inside(workdir), uid, gid)
    for path in inside("/etc").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    inside("/etc").chmod(0o755)

    port, public_port = free_port(), free_port()
    site = Path(sysconfig.get_paths(vars={"base": str(prefix)})["purelib"])
    _copy_runtime_dependencies(site)
    env = {
        **{k: (str(inside(v)) if v.startswith("/var/lib/orchestrator") else v) for k, v in image_env.items()},
        "PATH": f"{prefix / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": str(site),
        "HOME": str(inside(workdir)),
        "ORCH_SERVER__PORT": str(port),
        "ORCH_SERVER__PUBLIC_PORT": str(public_port),
        "ORCH_REDIS__URL": redis_url,
        "ORCH_ADMIN__TOKEN": REQUIRED["ORCH_ADMIN__TOKEN"],
        "ORCH_SERVER__PUBLIC_BASE_URL": REQUIRED["ORCH_SERVER__PUBLIC_BASE_URL"],
        "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": REQUIRED["ORCH_CALLBACK_KEYS"],
    }
    assert IMAGE_PYTHON is not None
    argv = [IMAGE_PYTHON, "-m", "orchestrator", *cmd[1:]]
    argv[argv.index("--config") + 1] = str(inside(argv[argv.index("--config") + 1]))
    log = scratch / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=inside(workdir),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=uid,
            group=gid,
            extra_groups=[],
        )
    try:
        deadline = time.monotonic() + 30
        while _http(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert _http(f"http://127.0.0.1:{public_port}/healthz") == 200
        assert _http(f"http://127.0.0.1:{port}/api/rooms") == 401  # the token is required
        # It really reads the shipped config (the profile the example rooms name) and can write its journal.
        journal = Path(env["ORCH_CALLBACKS__JOURNAL_PATH"])
        import_check = subprocess.run(
            [IMAGE_PYTHON, "-c", "import orchestrator; print(orchestrator.__file__)"],
            cwd=inside(workdir),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert import_check.stdout.startswith(str(prefix)), import_check  # the installed package ran
        assert journal.parent == inside(workdir) and os.stat(journal.parent).st_uid == uid
    finally:
        proc.terminate()
        proc.wait(30)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert '"level":"error"' not in output and "Traceback" not in output, output
