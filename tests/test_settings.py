"""Settings: environment and TOML sources, validation with field-level messages, secrets masked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import ConfigError, env_var_name, iter_fields, load_settings, secret_values

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ORCH_")]:
        monkeypatch.delenv(name)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orchestrator.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.server.port == 8080
    assert settings.server.max_body_bytes == 1024 * 1024


def test_environment_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SERVER__PORT", "9001")
    monkeypatch.setenv("ORCH_METASTUDIO__SK", "the-sk")
    monkeypatch.setenv("ORCH_METASTUDIO__CALLBACK_PROFILES__TENANT_A__PUBLIC_URL", "https://a.example/cb")
    monkeypatch.setenv("ORCH_METASTUDIO__CALLBACK_PROFILES__TENANT_A__KEYS", '["k1", "k2"]')
    settings = load_settings()
    assert settings.server.port == 9001
    assert settings.metastudio.sk.get_secret_value() == "the-sk"
    profile = settings.metastudio.callback_profiles["tenant_a"]
    assert [k.get_secret_value() for k in profile.keys] == ["k1", "k2"]
    assert "the-sk" not in repr(settings) and "k1" not in repr(settings)


def test_toml_file_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _toml(tmp_path, '[server]\nport = 9100\nhost = "0.0.0.0"\n[logging]\nlevel = "DEBUG"\n')
    assert load_settings(path).server.port == 9100
    monkeypatch.setenv("ORCH_SERVER__PORT", "9200")
    settings = load_settings(path)
    assert settings.server.port == 9200  # environment over file ...
    assert settings.server.host == "0.0.0.0"  # ... field by field, the rest of the section stays
    assert settings.logging.level == "DEBUG"


@pytest.mark.parametrize(
    ("toml", "env", "location"),
    [
        ("[server]\nport = 70000\n", {}, "server.port (ORCH_SERVER__PORT)"),
        ("[server]\nprot = 1\n", {}, "server.prot"),
        ("", {"ORCH_REDIS__URL": "http://nope"}, "redis.url (ORCH_REDIS__URL)"),
        ("", {"ORCH_SERVER__READ_TIMEOUT_S": "-1"}, "server.read_timeout_s"),
        (
            '[metastudio.callback_profiles.default]\npublic_url = "https://x/cb"\n',
            {},
            "metastudio.callback_profiles",
        ),
        (
            '[metastudio.callback_profiles.default]\nkeys = ["' + "k" * 33 + '"]\n',
            {},
            "metastudio.callback_profiles",
        ),
    ],
)
def test_invalid_configuration_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str], location: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, toml))
    assert any(loc.startswith(location) for loc, _ in info.value.problems), info.value.problems


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(_toml(tmp_path, "[server\nport = "))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[metastudio]\nproject_id = "pid-1"\nsk = "file-sk-secret"\n')
    result = _cli(
        "check-config",
        "--config",
        str(path),
        env={
            "ORCH_ADMIN__TOKEN": "env-admin-secret",
            "ORCH_REDIS__URL": "redis://:redis-pass-secret@db.internal:6380/2",
        },
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["metastudio"]["project_id"] == "pid-1"
    assert config["metastudio"]["sk"] == "**********"
    assert config["admin"]["token"] == "**********"
    assert config["redis"]["url"] == "redis://:***@db.internal:6380/2"
    for secret in ("file-sk-secret", "env-admin-secret", "redis-pass-secret"):
        assert secret not in result.stdout + result.stderr


def test_check_config_invalid_exits_2_with_field_messages(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[server]\nport = 0\n")
    result = _cli("check-config", "--config", str(path), env={"ORCH_REDIS__MAX_CONNECTIONS": "zero"})
    assert result.returncode == 2
    assert "server.port (ORCH_SERVER__PORT)" in result.stderr
    assert "redis.max_connections (ORCH_REDIS__MAX_CONNECTIONS)" in result.stderr
    assert result.stdout == ""
    assert _cli("run", "--config", str(tmp_path / "absent.toml")).returncode == 2


def test_secret_values_collects_every_secret() -> None:
    settings = load_settings(
        metastudio={
            "ak": "ak-value",
            "sk": "sk-value",
            "callback_profiles": {"p": {"public_url": "https://x/cb", "keys": ["key-one", "key-two"]}},
        },
        redis={"url": "redis://:pw-value@h:1/0"},
    )
    assert {"ak-value", "sk-value", "key-one", "key-two", "pw-value"} <= secret_values(settings)


def test_settings_that_moved_are_still_read_where_they_were_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MetaStudio's settings moved to its section (issue 14); a configuration written before still works for
    a release, and says what to change -- in a file, in the environment, in code."""
    path = _toml(
        tmp_path,
        '[callbacks.profiles.default]\npublic_url = "https://x.example/cb"\nkeys = ["k1"]\n'
        '[callbacks]\nstrict = true\n[interaction]\nllm_app_key = "app-key"\n',
    )
    monkeypatch.setenv("ORCH_INTERACTION__CALLBACK_TOKEN", "tok")
    with pytest.warns(FutureWarning) as caught:
        settings = load_settings(path)
    assert settings.metastudio.callback_profiles["default"].keys[0].get_secret_value() == "k1"
    assert settings.metastudio.callback_strict is True
    assert settings.metastudio.llm_app_key.get_secret_value() == "app-key"
    assert settings.metastudio.interaction_token.get_secret_value() == "tok"
    said = " ".join(str(w.message) for w in caught)
    assert "callbacks.profiles (ORCH_CALLBACKS__PROFILES) moved to metastudio.callback_profiles" in said
    assert "interaction.callback_token" in said and "ORCH_METASTUDIO__INTERACTION_TOKEN" in said
    assert "callbacks.strict" in said and "interaction.llm_app_key" in said


def test_example_config_documents_every_setting() -> None:
    example = ROOT / "config" / "orchestrator.example.toml"
    load_settings(example)  # it is valid as shipped
    text = example.read_text()
    sections = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    by_section = dict(zip(sections[1::2], sections[2::2], strict=True))
    for dotted, env, _, _ in iter_fields():
        section, field = dotted.split(".")
        as_key = re.search(rf"^#? ?{field} = ", by_section[section], flags=re.M)
        as_table = f"[{section}.{field}." in text  # e.g. [callbacks.profiles.default]
        assert as_key or as_table, dotted
        assert env in text, env


def test_readme_lists_every_setting_with_its_env_var() -> None:
    readme = (ROOT / "README.md").read_text()
    for dotted, env, _, _ in iter_fields():
        assert f"`{dotted}`" in readme and f"`{env}`" in readme, dotted


def test_env_var_name() -> None:
    assert env_var_name(["server", "port"]) == "ORCH_SERVER__PORT"


def test_log_level_in_any_case() -> None:
    assert load_settings(None, logging={"level": "info"}).logging.level == "INFO"
    with pytest.raises(ConfigError, match=r"logging\.level"):
        load_settings(None, logging={"level": "verbose"})
