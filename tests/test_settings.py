"""Settings from MT_* variables and CLI options, validated, with secrets kept out of logs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from memory_tiers import ConfigError, Keys, Settings
from memory_tiers.cli import main
from memory_tiers.settings import env_var


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
    assert Keys(settings.prefix).stream == "sim7:states"
    assert settings.keep_state_after_stm is True
    assert Settings.from_env({"MT_KEEP_STATE_AFTER_STM": "off"}).keep_state_after_stm is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MT_BATCH_SIZE": "many"}, "MT_BATCH_SIZE='many': expected int"),
        ({"MT_BATCH_SIZE": "0"}, "batch_size=0: must be positive"),
        ({"MT_STM_ALGORITHM": "IVF"}, "stm_algorithm='IVF': expected one of FLAT, HNSW"),
        ({"MT_IM_DATATYPE": "int4"}, "im_datatype='int4': expected one of float32, float16"),
        ({"MT_KEEP_STATE_AFTER_STM": "maybe"}, "MT_KEEP_STATE_AFTER_STM='maybe': expected true"),
        ({"MT_CONSOLIDATE_INTERVAL_S": "0"}, "consolidate_interval_s=0.0: must be positive"),
        ({"MT_CONSUMER_MAX_IDLE_S": "0.2"}, "consumer_max_idle_s=0.2: must be at least 3 x"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


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
    assert "stm_algorithm='IVF'" in bad.output
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
