"""Settings from MT_* variables and CLI options, validated, with secrets kept out of logs."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from memory_tiers import ConfigError, Keys, Settings
from memory_tiers.cli import main
from memory_tiers.settings import env_var, field_type


def test_defaults_match_the_design() -> None:
    settings = Settings()
    assert [settings.tier(t).dim for t in ("stm", "im", "ltm")] == [384, 128, 32]
    assert settings.dims == (384, 128, 32)
    assert {settings.tier(t).algorithm for t in ("stm", "im", "ltm")} == {"FLAT"}
    assert settings.tier("stm").max_per_agent == 1000
    assert settings.tier("stm").max_age_s == 3600.0
    assert settings.tier("im").max_per_agent == 10_000
    assert settings.tier("im").max_age_s == 86_400.0
    assert settings.tier("ltm").max_age_s is None
    assert settings.batch_size == 256


def test_settings_name_their_keys_under_their_prefix() -> None:
    assert Settings(prefix="sim7").keys == Keys("sim7")
    assert Settings().keys.stream == "mt:states"


def test_from_env_parses_types_and_off() -> None:
    env = {
        "MT_REDIS_URL": "redis://h:1/0",
        "MT_BATCH_SIZE": "64",
        "MT_STM_MAX_AGE_S": "1.5",
        "MT_IM_MAX_PER_AGENT": "off",
        "MT_LTM_ALGORITHM": "HNSW",
        "MT_PREFIX": "sim7",
        "MT_KEEP_STATE_AFTER_STM": "yes",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(env, batch_size=128)
    assert settings.redis_url == "redis://h:1/0"
    assert settings.batch_size == 128  # keyword overrides beat the environment
    assert settings.stm_max_age_s == 1.5
    assert settings.im_max_per_agent is None
    assert settings.tier("ltm").algorithm == "HNSW"
    assert settings.keys.stream == "sim7:states"
    assert settings.keep_state_after_stm is True
    assert Settings.from_env({"MT_KEEP_STATE_AFTER_STM": "off"}).keep_state_after_stm is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MT_BATCH_SIZE": "many"}, "MT_BATCH_SIZE='many': expected an integer, 1 or more"),
        ({"MT_BATCH_SIZE": "0"}, "MT_BATCH_SIZE=0: expected an integer, 1 or more"),
        ({"MT_STM_ALGORITHM": "IVF"}, "MT_STM_ALGORITHM='IVF': expected FLAT or HNSW"),
        ({"MT_IM_DATATYPE": "int4"}, "MT_IM_DATATYPE='int4': expected float32 or float16"),
        ({"MT_KEEP_STATE_AFTER_STM": "maybe"}, "MT_KEEP_STATE_AFTER_STM='maybe': expected true"),
        ({"MT_CONSOLIDATE_INTERVAL_S": "0"}, "MT_CONSOLIDATE_INTERVAL_S=0.0: expected a number"),
        ({"MT_CONSUMER_MAX_IDLE_S": "0.2"}, "MT_CONSUMER_MAX_IDLE_S=0.2: must be at least 3 x"),
        ({"MT_STM_MAX_AGE_S": "-5"}, "MT_STM_MAX_AGE_S=-5.0: expected a number of seconds, 0 or"),
        ({"MT_IM_MAX_AGE_S": "nan"}, "MT_IM_MAX_AGE_S=nan: expected a number of seconds"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


BAD_VALUES = {
    "redis_url": "localhost:6379",
    "prefix": "two words",
    "model_path": ".",
    "stm_algorithm": "IVF",
    "im_algorithm": "ANNOY",
    "ltm_algorithm": "flat-ish",
    "stm_datatype": "int8",
    "im_datatype": "float64",
    "ltm_datatype": "bfloat16",
    "keep_state_after_stm": "maybe",
    "stream_max_age_s": "0",
    "metrics_port": "70000",
    "metrics_host": "",
    "redis_server": "",
    "redis_modules": "",
    "api_host": "two words",
}
"""A value each setting refuses; numeric settings not named here get -1 (and 'x')."""

ACCEPTING_ANY_TEXT = {"redis_server", "redis_modules", "api_keys", "api_keys_file"}
"""Checked where they are used: paths when the embedded Redis starts (find_redis_server names a
missing one), API keys and their file when the API starts (auth.py names the variable)."""


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_setting_refuses_a_bad_value_naming_its_variable(name: str) -> None:
    if name in ACCEPTING_ANY_TEXT:
        assert Settings.from_env({env_var(name): "/x"}).__getattribute__(name) == "/x"
        return
    target = field_type(name)
    numeric = target in (int, float)
    for bad in ["-1", "x"] if numeric else [BAD_VALUES[name]]:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({env_var(name): bad})
        message = str(caught.value)
        assert message.startswith(env_var(name) + "="), message
        assert "expected" in message, message


def test_cli_only_variables_are_named_in_their_errors() -> None:
    runner = CliRunner()
    for variable, command in [
        ("MT_LOG_LEVEL", ["check"]),
        ("MT_LOG_FORMAT", ["check"]),
        ("MT_TORCH_THREADS", ["serve"]),
        ("MT_TORCH_THREADS", ["train", "--simulate", "10"]),
        ("MT_ALLOW_UNTRAINED", ["serve"]),
        ("MT_CONSOLIDATE", ["serve"]),
    ]:
        result = runner.invoke(main, command, env={variable: "nonsense"})
        assert result.exit_code == 2, (variable, result.output)
        assert variable in result.output, (variable, result.output)


def test_enum_values_are_case_insensitive() -> None:
    settings = Settings.from_env(
        {"MT_STM_ALGORITHM": "hnsw", "MT_IM_DATATYPE": "FLOAT16", "MT_LTM_ALGORITHM": " Flat"}
    )
    assert (settings.stm_algorithm, settings.im_datatype) == ("HNSW", "float16")
    assert settings.ltm_algorithm == "FLAT"


def test_a_url_without_a_scheme_is_refused_with_its_password_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(redis_url="app:s3cret@localhost:6379")
    message = str(caught.value)
    assert message.startswith("MT_REDIS_URL='app:***@localhost:6379': not a Redis URL")
    assert "redis://app:***@localhost:6379" in message
    assert "s3cret" not in message
    with pytest.raises(ConfigError, match="MT_REDIS_URL='redis://h:port/0': not a Redis URL"):
        Settings(redis_url="redis://h:port/0")
    assert Settings(redis_url="unix:///run/redis.sock").redis_url == "unix:///run/redis.sock"


def test_unknown_tier_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown tier 'xtm'"):
        Settings().tier("xtm")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://app:s3cret@redis.example:6380/0", "rediss://app:***@redis.example:6380/0"),
        ("redis://:s3cret@h:6379", "redis://:***@h:6379"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redacted_hides_the_password(url: str, shown: str) -> None:
    redacted = Settings(redis_url=url).redacted()
    assert redacted["redis_url"] == shown
    assert "s3cret" not in str(redacted)


def test_cli_options_and_env_fill_the_same_settings() -> None:
    seen: list[Settings] = []

    @main.command("show-settings")
    def show() -> None:
        import click

        seen.append(click.get_current_context().obj)

    runner = CliRunner()
    result = runner.invoke(
        main, ["--batch-size", "32", "show-settings"], env={"MT_STM_MAX_PER_AGENT": "5"}
    )
    assert result.exit_code == 0, result.output
    assert (seen[0].batch_size, seen[0].stm_max_per_agent) == (32, 5)
    bad = runner.invoke(main, ["--stm-algorithm", "IVF", "show-settings"])
    assert bad.exit_code == 2
    assert bad.output == "Error: MT_STM_ALGORITHM='IVF': expected FLAT or HNSW (any case)\n"
    after = runner.invoke(main, ["show-settings", "--batch-size", "48", "--prefix=p2"])
    assert after.exit_code == 0, after.output
    assert (seen[1].batch_size, seen[1].prefix) == (48, "p2")
    main.commands.pop("show-settings")


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(MT_[A-Z_{},]+)`", table))
    expanded = set()
    for name in documented:  # MT_{STM,IM,LTM}_ALGORITHM stands for three
        if match := re.fullmatch(r"MT_\{([A-Z,]+)\}_(\w+)", name):
            expanded |= {f"MT_{tier}_{match[2]}" for tier in match[1].split(",")}
        else:
            expanded.add(name)
    expected = {env_var(f.name) for f in dataclasses.fields(Settings)}
    assert expected - expanded == set()
    assert {"MT_LOG_LEVEL", "MT_LOG_FORMAT"} <= expanded


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`memory-tiers ARGS` in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "memory_tiers", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["init"],
        ["query", "--agent", "a", "--state", "{}"],
        ["stats"],
        ["consolidate", "--now"],
        ["reencode"],
        ["train", "--from-stream"],
        ["evaluate", "--from-stream"],
    ],
)
def test_a_url_without_scheme_stops_every_command_with_one_line(command: list[str]) -> None:
    result = run_cli(*command, env={"MT_REDIS_URL": "localhost:6379"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: MT_REDIS_URL='localhost:6379': not a Redis URL, expected one starting with "
        "redis://, rediss:// or unix:// (did you mean 'redis://localhost:6379'?)"
    ]


def test_check_with_a_bad_setting_is_unhealthy_in_one_line() -> None:
    result = run_cli("check", env={"MT_REDIS_URL": "localhost:6379"})
    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout.startswith("unhealthy: MT_REDIS_URL='localhost:6379': not a Redis URL")
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("log_format", "command"), [("text", "serve"), ("json", "serve"), ("json", "api")]
)
def test_a_service_with_a_bad_setting_exits_2_with_one_log_line(
    log_format: str, command: str
) -> None:
    result = run_cli("--log-format", log_format, command, env={"MT_REDIS_URL": "localhost:6379"})
    assert result.returncode == 2  # systemd: RestartPreventExitStatus=2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    if log_format == "json":
        record = json.loads(line)
        assert record["level"] == "CRITICAL"
        message = record["message"]
    else:
        assert " CRITICAL memory_tiers.cli " in line
        message = line
    assert f"memory-tiers {command} stops: MT_REDIS_URL='localhost:6379': not a Redis" in message


def test_version() -> None:
    result = run_cli("--version", env={})
    assert result.returncode == 0
    assert result.stdout == f"memory-tiers, version {importlib.metadata.version('memory_tiers')}\n"


def test_help_shows_each_setting_with_its_type() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--batch-size INTEGER" in result.output
    assert "--stm-max-age-s SECONDS|off" in result.output
    assert "--stm-algorithm [FLAT|HNSW]" in result.output
    assert "--redis-url URL" in result.output
    assert "--metrics-host HOST" in result.output and "--api-port INTEGER" in result.output
    assert "TEXT" not in result.output.replace("--prefix TEXT", "")
