"""docker-compose.yml and deploy/Dockerfile, checked statically (no Docker engine runs here).

They must parse, run a command the CLI really has, listen on the port the settings say, and only set
environment variables that are settings.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import build_parser
from orchestrator.settings import ENV_PREFIX, iter_fields, load_settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_ENV_VARS = {env for _, env, _, _ in iter_fields()}
PROFILE_ENV_RE = re.compile(r"^ORCH_METASTUDIO__CALLBACK_PROFILES__\w+__(PUBLIC_URL|AUTH_TYPE|KEYS)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _assert_cli_command(argv: list[str]) -> None:
    assert argv[0] == "orchestrator"
    build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown command or option


#: What an operator gives for the variables compose requires (${VAR:?...}).
REQUIRED = {
    "ORCH_ADMIN__TOKEN": "deploy-admin-token-0123",
    "ORCH_SERVER__PUBLIC_BASE_URL": "https://live.example.com",
    "ORCH_CALLBACK_KEYS": '["deploy-callback-key"]',
}


def _resolved(env: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
        out[name] = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: REQUIRED[m.group(1)], value)
    return out


def _config_file(argv: list[str]) -> Path:
    """The repository file behind the image's ``--config`` path (the Dockerfile COPYs it there)."""
    assert "--config" in argv
    assert argv[argv.index("--config") + 1] == "/etc/orchestrator/orchestrator.toml"
    return ROOT / "deploy" / "orchestrator.toml"


def _env(compose: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"]["orchestrator"]["environment"].items()}


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "orchestrator"} <= set(services)
    for name in ("redis", "orchestrator"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert services["orchestrator"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["orchestrator"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / services["orchestrator"]["build"]["context"] / "deploy" / "Dockerfile").is_file()
    _assert_cli_command(services["orchestrator"]["command"])


def test_compose_environment_is_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(compose)
    for name in env:
        assert name.startswith(ENV_PREFIX)
        assert name in SETTING_ENV_VARS or PROFILE_ENV_RE.match(name), f"{name} is not a setting"
    # The values (with ${VAR:-default} resolved to their defaults, and the required ${VAR:?...} given as an
    # operator would) and the config file the command names make a valid, usable configuration.
    for name, value in _resolved(env).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_config_file(compose["services"]["orchestrator"]["command"]))
    assert settings.admin.token.get_secret_value() and settings.metastudio.callback_profiles["default"].keys
    from orchestrator.cli import config_warnings, deployment_problems

    assert settings.callbacks.journal_path == Path("/var/lib/orchestrator/callback-journal.jsonl")
    assert [p for p in deployment_problems(settings) if p[0] != "callbacks.journal_path"] == []
    assert not [w for w in config_warnings(settings) if "callback profile" in w or "admin.token" in w]
    assert settings.redis.url.get_secret_value().startswith("redis://redis:")  # the compose service name
    grace = int(compose["services"]["orchestrator"]["stop_grace_period"].rstrip("s"))
    assert grace > settings.server.shutdown_timeout_s


def test_compose_ports_match_settings(compose: dict[str, Any]) -> None:
    env = _env(compose)
    port, public_port = env["ORCH_SERVER__PORT"], env["ORCH_SERVER__PUBLIC_PORT"]
    service = compose["services"]["orchestrator"]
    published = {mapping.split(":")[-1]: mapping for mapping in service["ports"]}
    assert set(published) == {port, public_port}
    # The admin port is published on the host's loopback only; the public one to the world.
    assert published[port].startswith("127.0.0.1:") and not published[public_port].startswith("127.0.0.1:")
    assert f"127.0.0.1:{port}/" in " ".join(service["healthcheck"]["test"])


def test_dockerfile(dockerfile: list[tuple[str, str]]) -> None:
    instructions = [name for name, _ in dockerfile]
    final_stage = dockerfile[max(i for i, (n, _) in enumerate(dockerfile) if n == "FROM") :]
    args = dict(final_stage)
    assert re.match(r"python:3\.1[1-9][\w.-]*-slim", args["FROM"])
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0")
    env = dict(shlex.split(item)[0].split("=", 1) for item in shlex.split(args["ENV"]))
    assert set(env) - {"PYTHONUNBUFFERED"} <= SETTING_ENV_VARS
    assert args["EXPOSE"].split() == [env["ORCH_SERVER__PORT"], env["ORCH_SERVER__PUBLIC_PORT"]]
    assert f"127.0.0.1:{env['ORCH_SERVER__PORT']}/healthz" in args["HEALTHCHECK"]
    _assert_cli_command(yaml.safe_load(args["CMD"]))
    assert "STOPSIGNAL" in instructions
    for name, arg in dockerfile:
        if name == "COPY" and "--from" not in arg:
            for source in shlex.split(arg)[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} missing"
    # The config CMD reads is the one COPY puts there; the journal is in the WORKDIR, a volume.
    cmd = yaml.safe_load(args["CMD"])
    copies = [shlex.split(arg) for name, arg in final_stage if name == "COPY" and "--from" not in arg]
    assert ["deploy/orchestrator.toml", cmd[cmd.index("--config") + 1]] in copies
    assert env["ORCH_CALLBACKS__JOURNAL_PATH"].startswith(args["WORKDIR"] + "/")
    assert args["WORKDIR"] in args["VOLUME"]
    assert f"chown {args['USER']} {args['WORKDIR']}" in args["RUN"]
