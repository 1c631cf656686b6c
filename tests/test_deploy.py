"""The deployment files in docker/: Dockerfile, compose file, systemd unit, env example.

No container engine runs here, so these check what can be checked without one: systemd's
own parser on the unit, the compose-spec JSON schema on the compose file, and, by parsing
the files, the properties ops rely on (healthchecks, restarts, a non-root user, every MT_*
variable a real setting with a valid value).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from memory_tiers.cli import main as cli_main
from memory_tiers.errors import MemoryTiersError
from memory_tiers.settings import Settings, env_var

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
UNIT = DOCKER / "memory-tiers.service"
API_UNIT = DOCKER / "memory-tiers-api.service"
ENV_FILE = DOCKER / "memory-tiers.env"
DOCKERIGNORE = REPO / ".dockerignore"

CLI_ONLY_VARS = frozenset(
    {
        "MT_LOG_LEVEL",
        "MT_LOG_FORMAT",
        "MT_ALLOW_UNTRAINED",
        "MT_CONSUMER",
        "MT_TORCH_THREADS",
        "MT_CONSOLIDATE",
    }
)
"""Variables read by CLI options rather than by Settings fields."""

SETTINGS_VARS = frozenset(env_var(f.name) for f in dataclasses.fields(Settings))
MT_NAME = re.compile(r"\bMT_[A-Z0-9_]+\b")
CREDENTIALS_IN_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@'\"]*:([^\s/@'\"]+)@")
PLACEHOLDER_PASSWORD = "CHANGE-ME"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# -- parsers -----------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"unit line outside a section: {raw!r}"
        assert "=" in line, f"unit line without '=': {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comment lines dropped, continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            word, _, args = line.strip().partition(" ")
            instructions.append((word.upper(), " ".join(args.split())))
    return instructions


def dockerfile_env(instructions: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The variables that ENV instructions set (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for word, args in instructions:
        if word == "ENV":
            for token in shlex.split(args):
                assert "=" in token, f"ENV {args!r}: use the KEY=VALUE form"
                key, value = token.split("=", 1)
                env[key] = value
    return env


def parse_env_file(text: str, *, commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (quotes stripped).

    commented: also the `#KEY=VALUE` examples (a variable line commented out).
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if commented and re.match(r"#\s*[A-Z][A-Z0-9_]*=", line):
            line = line.lstrip("#").strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"not KEY=VALUE: {raw!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def command_words(test: Any) -> list[str]:
    """A compose healthcheck test or command, as the words of the command it runs."""
    if isinstance(test, str):
        return shlex.split(test)
    words = [str(word) for word in test]
    if words and words[0] == "CMD-SHELL":
        return shlex.split(" ".join(words[1:]))
    if words and words[0] in ("CMD", "NONE"):
        return words[1:]
    return words


def contains_run(words: list[str], run: list[str]) -> bool:
    """`run` appears in `words` as consecutive words."""
    return any(words[i : i + len(run)] == run for i in range(len(words) - len(run) + 1))


def duration_s(value: str) -> float:
    """A compose duration ('1m30s', '30s', '500ms') in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def compose_default(value: str) -> str:
    """The default of a `${VAR:-default}` interpolation, or the value itself."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:?-(.*)\}", value)
    return match.group(1) if match else value


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Whether Docker sends `path` (relative to the context) with these .dockerignore lines.

    The last pattern matching the path, or a folder above it, decides; `!` re-includes.
    """
    included = True
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in patterns:
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            included = negate
    return included


# -- shared checks -----------------------------------------------------------------------------


def cli_envvar_params() -> dict[str, click.Parameter]:
    """Every CLI parameter that reads an MT_* variable, by variable name."""
    params: dict[str, click.Parameter] = {}
    commands: list[click.Command] = [cli_main]
    if isinstance(cli_main, click.Group):
        commands += list(cli_main.commands.values())
    for command in commands:
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for name in envvars:
                if isinstance(name, str) and name.startswith("MT_"):
                    params[name] = param
    return params


def assert_valid_values(values: Mapping[str, str], where: str) -> None:
    """Each MT_* value parses as the daemon would parse it (Settings or the CLI option)."""
    settings_values = {k: v for k, v in values.items() if k in SETTINGS_VARS}
    try:
        Settings.from_env(settings_values)
    except MemoryTiersError as e:
        pytest.fail(f"{where}: {e}")
    params = cli_envvar_params()
    for name, value in values.items():
        if name in CLI_ONLY_VARS and name in params:
            param = params[name]
            try:
                param.type.convert(value, param, None)
            except click.BadParameter as e:
                pytest.fail(f"{where}: {name}={value!r}: {e.message}")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        timeout=60,
    )


def memory_tiers_executable() -> str:
    beside = Path(sys.executable).with_name("memory-tiers")
    found = str(beside) if beside.exists() else shutil.which("memory-tiers")
    assert found, "memory-tiers is not installed: pip install -e '.[dev]'"
    return found


def verifiable_unit(
    tmp_path: Path, replace: Mapping[str, str] | None = None, unit: Path = UNIT
) -> Path:
    """A copy of the unit that can be verified on this machine.

    Its ExecStart names this environment's memory-tiers (systemd-analyze verify checks the
    binary exists) and its EnvironmentFile is the example. `replace` edits lines further.
    """
    text = unit.read_text()
    text, count = re.subn(
        r"^ExecStart=\S+/memory-tiers\b",
        lambda _: f"ExecStart={memory_tiers_executable()}",
        text,
        flags=re.M,
    )
    assert count == 1, "ExecStart= does not run .../memory-tiers"
    text = re.sub(
        r"^EnvironmentFile=.*$", lambda _: f"EnvironmentFile={ENV_FILE}", text, flags=re.M
    )
    for old, new in (replace or {}).items():
        assert old in text
        text = text.replace(old, new)
    copy_path = tmp_path / unit.name
    copy_path.write_text(text)
    return copy_path


def systemd_analyze(*args: str | Path) -> tuple[int, list[str]]:
    """systemd-analyze's exit code and its output lines."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    result = subprocess.run(
        ["systemd-analyze", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def unit_complaints(lines: list[str]) -> list[str]:
    """The lines about our unit (verify may also print warnings about other system units)."""
    return [line for line in lines if UNIT.name in line]


# -- systemd unit ------------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    code, lines = systemd_analyze("verify", "--man=no", verifiable_unit(tmp_path))
    assert code == 0, "\n".join(lines)
    assert unit_complaints(lines) == []


def test_systemd_analyze_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    """Verify exits 0 on keys it ignores: only its output shows them, so that is checked."""
    unit = verifiable_unit(
        tmp_path,
        {"ProtectSystem=strict": "ProtectSystem=stricter", "NoNewPrivileges=": "NoNewPrivilege="},
    )
    _, lines = systemd_analyze("verify", "--man=no", unit)
    complaints = "\n".join(unit_complaints(lines))
    assert "ProtectSystem" in complaints or "protect system" in complaints
    assert "NoNewPrivilege" in complaints


def test_unit_sandbox_exposure_stays_low(tmp_path: Path) -> None:
    """systemd's own sandboxing score of the unit (0 best, 10 worst; 2.8 on systemd 252).

    At most 3.0: dropping ProtectSystem, ProtectHome and PrivateDevices alone makes it 3.4.
    """
    code, lines = systemd_analyze(
        "security", "--offline=yes", "--threshold=30", verifiable_unit(tmp_path)
    )
    assert code == 0, "\n".join(lines[-5:])


def test_unit_restarts_runs_unprivileged_and_stops_gracefully() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] in ("simple", "exec")
    assert service["User"] not in ("", "root", "0")
    assert service.get("Group", "x") not in ("", "root", "0")
    assert service["EnvironmentFile"] == "/etc/memory-tiers/memory-tiers.env"
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).is_absolute() and Path(exec_start[0]).name == "memory-tiers"
    assert exec_start[1:] == ["serve"]
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "5"
    # exit 2: the daemon refused its model or settings; restarting would only loop
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "30"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    assert service["UMask"] == "0077"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# -- compose -----------------------------------------------------------------------------------


def test_compose_matches_the_compose_spec() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("daemon", "interval", 5),  # a duration is a string: "5s"
        ("redis", "intervall", "5s"),  # no such key
    ],
)
def test_compose_schema_check_catches_mistakes(
    tmp_path: Path, service: str, key: str, value: Any
) -> None:
    broken = copy.deepcopy(load_compose())
    broken["services"][service]["healthcheck"][key] = value
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = check_jsonschema(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "healthcheck" in result.stdout


def test_compose_redis_is_redis_8_with_aof_and_a_healthcheck() -> None:
    compose = load_compose()
    assert "version" not in compose, "the top-level version key is obsolete"
    redis = compose["services"]["redis"]
    assert str(redis["image"]).startswith("redis:8")
    command = command_words(redis["command"])
    assert contains_run(command, ["--appendonly", "yes"])
    assert contains_run(command, ["--appendfsync", "everysec"])
    volume = next(v for v in redis["volumes"] if str(v).split(":")[1] == "/data")
    assert str(volume).split(":")[0] in compose["volumes"], "/data must be a named volume"
    test = command_words(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "ping" in test


def test_compose_daemon_waits_for_redis_and_checks_its_own_health() -> None:
    compose = load_compose()
    daemon = compose["services"]["daemon"]
    build = daemon["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert daemon["depends_on"]["redis"]["condition"] == "service_healthy"
    assert contains_run(
        command_words(daemon["healthcheck"]["test"]), ["memory-tiers", "check", "--local"]
    )
    assert daemon["restart"] == "unless-stopped"
    assert duration_s(daemon["stop_grace_period"]) >= 30
    assert daemon.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert daemon["read_only"] is True
    assert "/tmp" in daemon["tmpfs"]
    assert "no-new-privileges:true" in daemon["security_opt"]
    assert daemon["cap_drop"] == ["ALL"]
    environment = daemon["environment"]
    assert isinstance(environment, dict)
    assert compose_default(environment["MT_REDIS_URL"]).startswith("redis://redis:6379/")
    container_ports = {str(p).rsplit(":", 1)[-1].split("/")[0] for p in daemon["ports"]}
    assert str(environment["MT_METRICS_PORT"]) in container_ports


def test_compose_defaults_match_the_image() -> None:
    """An interpolation default in compose is the same value the image sets."""
    image_env = dockerfile_env(parse_dockerfile(DOCKERFILE.read_text()))
    environment = load_compose()["services"]["daemon"]["environment"]
    for name, value in environment.items():
        if name in image_env and value is not None:
            assert compose_default(str(value)) == image_env[name], name


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_installs_cpu_torch_then_the_package_and_drops_root() -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    words = [word for word, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [(i, args) for i, (word, args) in enumerate(instructions) if word == "RUN"]
    installs = [(i, args) for i, args in runs if "pip install" in args]
    assert all("--no-cache-dir" in args for _, args in installs)
    torch_at = next(i for i, args in installs if re.search(r"\btorch==[\w.]+", args))
    assert f"--index-url {CPU_INDEX}" in instructions[torch_at][1]
    package_at = next(i for i, args in installs if "." in shlex.split(args))
    assert torch_at < package_at
    user_at = max(i for i, word in enumerate(words) if word == "USER")
    assert user_at > max(i for i, _ in runs), "USER must come after every RUN"
    user = instructions[user_at][1].split(":")[0]
    assert user not in ("root", "0")
    healthcheck = instructions[words.index("HEALTHCHECK")][1]
    assert re.search(r'\bCMD \["memory-tiers", "check", "--local"\]', healthcheck)
    assert instructions[words.index("ENTRYPOINT")][1] == '["memory-tiers"]'
    assert instructions[words.index("CMD")][1] == '["serve"]'
    assert instructions[words.index("STOPSIGNAL")][1] == "SIGTERM"


def test_dockerfile_environment_model_and_metrics() -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    env = dockerfile_env(instructions)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["MT_LOG_FORMAT"] == "json"
    assert env["MT_METRICS_PORT"] == "9108"
    exposed = {args for word, args in instructions if word == "EXPOSE"}
    assert env["MT_METRICS_PORT"] in exposed
    copies = [shlex.split(args) for word, args in instructions if word == "COPY"]
    assert ["models/state_autoencoder.pt", env["MT_MODEL_PATH"]] in copies


def test_dockerfile_sources_reach_the_build_context() -> None:
    """What the Dockerfile COPYs exists and .dockerignore lets it through; local clutter not."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    sources = [
        source
        for word, args in instructions
        if word == "COPY"
        for source in shlex.split(args)[:-1]
        if not source.startswith("--")
    ]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert dockerignore_includes(relative, patterns), relative
    for clutter in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", ".env"):
        assert not dockerignore_includes(clutter, patterns), clutter
    assert not dockerignore_includes("memory_tiers/__pycache__/cli.cpython-311.pyc", patterns)


# -- no secrets, real settings -----------------------------------------------------------------


def test_no_secret_is_baked_in() -> None:
    for path in (DOCKERFILE, COMPOSE, UNIT, ENV_FILE):
        for password in CREDENTIALS_IN_URL.findall(path.read_text()):
            assert password in (PLACEHOLDER_PASSWORD, "PASSWORD"), f"{path.name}: {password!r}"
    for word, args in parse_dockerfile(DOCKERFILE.read_text()):
        if word in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|MT_REDIS_URL", args), args


def test_every_mt_variable_named_is_a_real_setting() -> None:
    """An MT_* name in a deployment file that the daemon never reads is a silent typo."""
    declared = set(cli_envvar_params())
    assert sorted(CLI_ONLY_VARS - declared) == [], "the CLI no longer reads these"
    known = SETTINGS_VARS | CLI_ONLY_VARS
    for path in (ENV_FILE, COMPOSE, DOCKERFILE, UNIT, API_UNIT):
        unknown = sorted(set(MT_NAME.findall(path.read_text())) - known)
        assert unknown == [], f"{path.name} names variables no setting reads: {unknown}"


def test_env_example_values_are_valid() -> None:
    """Every line of the example, commented-out ones included, holds a value that parses."""
    text = ENV_FILE.read_text()
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            assert not line.startswith("export "), "systemd reads no 'export'"
            value = line.partition("=")[2]
            assert not re.search(r"\s#", value.strip("'\"")), f"comment after a value: {raw!r}"
    active = parse_env_file(text)
    assert {"MT_REDIS_URL", "MT_MODEL_PATH", "MT_LOG_FORMAT", "MT_METRICS_PORT"} <= set(active)
    assert active["MT_LOG_FORMAT"] == "json"
    assert_valid_values(active, ENV_FILE.name)
    assert_valid_values(parse_env_file(text, commented=True), f"{ENV_FILE.name} (commented)")
    image_env = dockerfile_env(parse_dockerfile(DOCKERFILE.read_text()))
    assert active["MT_MODEL_PATH"] == image_env["MT_MODEL_PATH"], "one model path everywhere"


def test_image_and_compose_values_are_valid() -> None:
    image_env = dockerfile_env(parse_dockerfile(DOCKERFILE.read_text()))
    assert_valid_values({k: v for k, v in image_env.items() if k.startswith("MT_")}, "Dockerfile")
    environment = load_compose()["services"]["daemon"]["environment"]
    values = {k: compose_default(str(v)) for k, v in environment.items() if v is not None}
    assert_valid_values(values, "compose.yaml")


# -- the HTTP API's unit and compose service ---------------------------------------------------


def test_api_unit_passes_systemd_analyze_verify_and_runs_the_api(tmp_path: Path) -> None:
    code, lines = systemd_analyze("verify", "--man=no", verifiable_unit(tmp_path, unit=API_UNIT))
    assert code == 0, "\n".join(lines)
    assert [line for line in lines if API_UNIT.name in line] == []
    service = {k: v[-1] for k, v in parse_unit(API_UNIT.read_text())["Service"].items()}
    assert shlex.split(service["ExecStart"])[1:] == ["api"]
    assert service["EnvironmentFile"] == "/etc/memory-tiers/memory-tiers.env"
    assert "2" in service["RestartPreventExitStatus"].split()
    daemon = {k: v[-1] for k, v in parse_unit(UNIT.read_text())["Service"].items()}
    assert service["User"] == daemon["User"] and service["ProtectSystem"] == "strict"


def test_compose_api_reads_its_keys_as_a_secret_and_checks_liveness() -> None:
    compose = load_compose()
    api = compose["services"]["api"]
    assert api["profiles"] == ["api"], "the API starts only with --profile api"
    assert api["command"] == ["api"] and api["image"] == compose["services"]["daemon"]["image"]
    assert api["secrets"] == ["api-keys"] and "api-keys" in compose["secrets"]
    assert api["environment"]["MT_API_KEYS_FILE"] == "/run/secrets/api-keys"
    port = str(api["environment"]["MT_API_PORT"])
    assert any(str(p).endswith(f":{port}") for p in api["ports"])
    assert f"127.0.0.1:{port}/livez" in " ".join(command_words(api["healthcheck"]["test"]))
    assert api["read_only"] is True and api["cap_drop"] == ["ALL"]
    values = {k: compose_default(str(v)) for k, v in api["environment"].items() if v is not None}
    assert_valid_values(values, "compose.yaml (api)")


# -- the package -------------------------------------------------------------------------------


def test_a_built_wheel_carries_the_default_model(tmp_path: Path) -> None:
    """What `pip install` of a wheel, sdist or git URL gets: the model inside the package."""
    import zipfile

    source = tmp_path / "src"  # a copy: setuptools builds in the source tree (build/)
    for folder in ("memory_tiers", "models"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__py*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("memory_tiers-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("memory_tiers/models/state_autoencoder.pt")
        names = archive.namelist()
    assert shipped == (REPO / "models" / "state_autoencoder.pt").read_bytes()
    assert "memory_tiers/models/__init__.py" in names
    assert not [n for n in names if n.endswith(".png")]
