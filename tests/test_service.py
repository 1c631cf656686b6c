"""Running as a service: heartbeat and `check`, Prometheus metrics, `stats`, the series, logs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import serve_env, serving
from test_ingest import (
    KEYS,
    daemon,
    make_settings,
    pending,
    running,
    wait_for,
    xadd_raw,
    xadd_states,
)

from memory_tiers import TIERS, EmbeddingEngine, Settings
from memory_tiers.cli import main
from memory_tiers.errors import ConfigError
from memory_tiers.logs import JsonFormatter
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.status import (
    Heartbeat,
    Sample,
    add_sample,
    clear_heartbeat,
    heartbeats,
    ingest_rates,
    model_versions,
    series,
    stream_status,
)
from memory_tiers.status import beat as status_beat
from memory_tiers.store import MemoryRecord, TierStore

HEARTBEAT_TTL_S = 4.0
"""Short heartbeats for the process tests (block_ms is 100 there), long enough that a loaded
box cannot let one expire between a beat and the checks that follow it."""


def check(url: str, **env: str) -> Result:
    """`memory-tiers check` against `url`, in process."""
    return CliRunner().invoke(main, ["check"], env={"MT_REDIS_URL": url, **env})


def metrics(port: int) -> dict[str, float]:
    """One scrape of the endpoint: {'name{label="value"}': value} for every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@pytest.fixture
def serve_process(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A `memory-tiers serve` child with short heartbeats, killed at the end whatever happened."""
    env = serve_env(model_path, redis_server.url)
    env.update(MT_HEARTBEAT_TTL_S=str(HEARTBEAT_TTL_S), MT_CONSOLIDATE="false")
    with serving(tmp_path, env, "svc") as (process, _):
        wait_for(lambda: redis_client.exists(KEYS.heartbeat("svc")) == 1, 60, "first heartbeat")
        yield process


# -- check -------------------------------------------------------------------------------------


def test_check_passes_for_a_live_daemon_and_fails_once_it_is_killed(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, serve_process: subprocess.Popen[bytes]
) -> None:
    xadd_states(redis_client, simulate_states(50, seed=3))
    wait_for(lambda: redis_client.zcard(KEYS.time_index("stm")) == 50, 30, "50 stored")

    live = check(redis_server.url)
    assert live.exit_code == 0, live.output
    assert live.output.startswith("ok: 1 live daemon(s) (svc); lag 0 (max 10000), pending 0")
    wait_for(lambda: heartbeats(redis_client, KEYS)[0].stored == 50, 5, "a newer heartbeat")
    beat = heartbeats(redis_client, KEYS)[0]
    assert (beat.consumer, beat.pid, beat.stored, beat.dead_letters) == (
        "svc", serve_process.pid, 50, 0,
    )  # fmt: skip
    assert 0 < redis_client.pttl(KEYS.heartbeat("svc")) <= HEARTBEAT_TTL_S * 1000

    serve_process.kill()  # no clean-up: the heartbeat key outlives the process ...
    serve_process.wait(10)
    assert check(redis_server.url).exit_code == 0
    wait_for(  # ... until its TTL runs out
        lambda: redis_client.exists(KEYS.heartbeat("svc")) == 0, 2 * HEARTBEAT_TTL_S, "expiry"
    )
    dead = check(redis_server.url)
    assert dead.exit_code == 1
    assert dead.output == (
        "unhealthy: no live daemon: no mt:heartbeat:<consumer> key (a daemon rewrites its "
        "heartbeat while it consumes; the key expires heartbeat_ttl_s after it stopped or froze)\n"
    )


def test_check_fails_for_a_lagging_daemon_and_passes_when_it_caught_up(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, serve_process: subprocess.Popen[bytes]
) -> None:
    serve_process.send_signal(signal.SIGSTOP)  # alive, but consuming nothing
    xadd_states(redis_client, simulate_states(300, seed=4))

    # The read it was blocked in may have taken the first entries before it froze.
    lag = 300 - pending(redis_client)
    assert lag > 100
    lagging = check(redis_server.url, MT_MAX_LAG="100")
    assert lagging.exit_code == 1
    assert lagging.output.startswith(
        f"unhealthy: lagging: {lag} stream entries wait unread, more than max_lag=100 "
    )
    assert check(redis_server.url, MT_MAX_LAG=str(lag)).exit_code == 0  # the limit is inclusive

    serve_process.send_signal(signal.SIGCONT)
    wait_for(lambda: redis_client.zcard(KEYS.time_index("stm")) == 300, 30, "catch-up")
    caught_up = check(redis_server.url, MT_MAX_LAG="100")
    assert caught_up.exit_code == 0, caught_up.output


def test_check_counts_the_lag_when_redis_cannot_tell_it(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, store: TierStore
) -> None:
    ids = xadd_states(redis_client, simulate_states(30, seed=5))
    redis_client.xgroup_create(KEYS.stream, KEYS.group, id=ids[9])  # 20 undelivered after it
    redis_client.xdel(KEYS.stream, ids[20])  # deleting an undelivered entry: lag nil in XINFO
    assert stream_status(redis_client, KEYS).lag is None
    counted = stream_status(redis_client, KEYS, count_lag_up_to=100)
    assert (counted.lag, counted.lag_capped) == (19, False)
    capped = stream_status(redis_client, KEYS, count_lag_up_to=5)
    assert (capped.lag, capped.lag_capped) == (5, True)

    beat = Heartbeat("x", "h", 1, "v", time.time(), time.time(), 0, 0, 30.0)
    status_beat(redis_client, KEYS, beat)
    result = check(redis_server.url, MT_MAX_LAG="4")
    assert result.exit_code == 1
    assert "lagging: at least 5 stream entries wait unread, more than max_lag=4" in result.output
    assert check(redis_server.url, MT_MAX_LAG="19").exit_code == 0


def test_check_local_counts_only_daemons_on_this_host(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, store: TierStore
) -> None:
    elsewhere = Heartbeat("far", "other-host", 1, "v", time.time(), time.time(), 0, 0, 30.0)
    status_beat(redis_client, KEYS, elsewhere)
    assert check(redis_server.url).exit_code == 0
    local = CliRunner().invoke(main, ["check", "--local"], env={"MT_REDIS_URL": redis_server.url})
    assert local.exit_code == 1
    assert local.output.startswith(f"unhealthy on this host ({socket.gethostname()}): no live")

    here = dataclasses.replace(elsewhere, consumer="near", host=socket.gethostname())
    status_beat(redis_client, KEYS, here)
    local = CliRunner().invoke(main, ["check", "--local"], env={"MT_REDIS_URL": redis_server.url})
    assert local.exit_code == 0
    assert local.output.startswith("ok: 1 live daemon(s) (near);")


def test_check_without_a_redis_url_is_unhealthy() -> None:
    result = CliRunner().invoke(main, ["check"], env={"MT_REDIS_URL": ""})
    assert result.exit_code == 1
    assert result.output == "unhealthy: no Redis to check: set MT_REDIS_URL (or --redis-url)\n"


def test_the_status_commands_do_not_load_torch() -> None:
    """A health probe every few seconds must stay cheap: torch alone takes a second to import."""
    probe = "import sys, memory_tiers.cli; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", probe], check=True)
    import memory_tiers

    assert all(getattr(memory_tiers, name) is not None for name in memory_tiers.__all__)


def test_check_reports_an_unreachable_redis_without_its_password() -> None:
    url = "redis://mt:S3cret-pw@127.0.0.1:1/0"  # nothing listens on port 1
    result = check(url)
    assert result.exit_code == 1
    assert result.output.startswith("unhealthy: cannot read Redis at redis://mt:***@127.0.0.1:1/0")
    assert "S3cret-pw" not in result.output


def test_a_daemon_that_stops_cleanly_removes_its_heartbeat(
    redis_client: redis.Redis, settings: Settings, model_path: Path, engine: EmbeddingEngine
) -> None:
    assert settings.redis_url
    with running(daemon(make_settings(settings.redis_url, model_path), engine, "clean")):
        wait_for(lambda: redis_client.exists(KEYS.heartbeat("clean")) == 1, 10, "heartbeat")
    assert redis_client.exists(KEYS.heartbeat("clean")) == 0


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_after_an_ingest_and_a_consolidation(
    redis_client: redis.Redis, settings: Settings, model_path: Path, engine: EmbeddingEngine
) -> None:
    assert settings.redis_url
    daemon_settings = make_settings(
        settings.redis_url, model_path, metrics_port=0, metrics_host="127.0.0.1",
        consolidate_interval_s=0.2, stm_max_per_agent=4, stm_max_age_s=None,
        # Nothing leaves IM: the old records' ts=1000 is decades past any IM age limit, and
        # the IM job would move them on to LTM before the other 48 arrive in IM.
        im_max_age_s=None, im_max_per_agent=None,
    )  # fmt: skip
    states = simulate_states(60, num_agents=3, seed=6)
    # Six memories an older model wrote (with their raw state): the two oldest move, encoded again.
    store = TierStore(redis_client, daemon_settings)
    store.ensure_indexes()
    noise = np.random.default_rng(6).normal(size=(6, 384)).astype(np.float32)
    store.write("stm", [
        MemoryRecord(
            entry_id=f"{1000 + i}-0", agent_id="old-agent", agent_type="explorer", step=i,
            ts=1000 + i, model_version="old-model", vector=noise[i],
            state_json=json.dumps(states[i]),
        )
        for i in range(6)
    ])  # fmt: skip
    with running(daemon(daemon_settings, engine, "metered")) as d:
        assert d.wait_started(30) and d.metrics_port
        xadd_states(redis_client, states)
        xadd_raw(redis_client, {"agent_id": "bad", "state": "{not json"})
        xadd_raw(redis_client, {"state": "{}"})  # no agent id
        # 4 agents keep 4 STM memories each; the other 48 + 2 move to IM.
        wait_for(lambda: redis_client.zcard(KEYS.time_index("im")) == 50, 30, "50 moved to IM")
        wait_for(lambda: metrics(d.metrics_port or 0).get("memory_tiers_stream_pending") == 0,
                 10, "all acked")  # fmt: skip
        values = metrics(d.metrics_port)

    assert values["memory_tiers_states_ingested_total"] == 60
    assert values["memory_tiers_dead_letters_total"] == 2
    batches = values["memory_tiers_batch_seconds_count"]
    assert batches >= 1
    assert values['memory_tiers_batch_seconds_bucket{le="+Inf"}'] == batches
    assert 0 < values["memory_tiers_batch_seconds_sum"] < 60
    assert values["memory_tiers_redis_up"] == 1
    assert values["memory_tiers_stream_lag"] == 0
    assert values["memory_tiers_stream_length"] == 62
    assert values["memory_tiers_dead_letter_length"] == 2
    assert values["memory_tiers_live_daemons"] == 1
    assert values['memory_tiers_tier_memories{tier="stm"}'] == 16
    assert values['memory_tiers_tier_memories{tier="im"}'] == 50
    assert values['memory_tiers_tier_memories{tier="ltm"}'] == 0
    assert values['memory_tiers_consolidation_moved_total{job="consolidate-stm"}'] == 50
    assert values['memory_tiers_consolidation_reencoded_total{job="consolidate-stm"}'] == 2
    passes = values['memory_tiers_consolidation_seconds_count{job="consolidate-stm",outcome="ok"}']
    assert passes >= 1
    # Drift: one in 100 encoded states is sampled (the first of 60), beside the held-out error.
    assert engine.validation_mse is not None
    features = engine.schema.extract_batch(states[:1])
    for tier in TIERS:
        decoded = engine.decode(engine.encode_features(features)[tier], tier)
        sampled = values[f'memory_tiers_reconstruction_mse{{tier="{tier}"}}']
        assert sampled == pytest.approx(float(((decoded - features) ** 2).mean()), rel=1e-4)
        held_out = values[f'memory_tiers_model_validation_mse{{tier="{tier}"}}']
        assert held_out == pytest.approx(engine.validation_mse[tier], rel=1e-9)


def test_the_metrics_endpoint_says_when_redis_is_gone(
    redis_client: redis.Redis, settings: Settings, model_path: Path, engine: EmbeddingEngine
) -> None:
    assert settings.redis_url
    with EmbeddedRedis() as doomed:
        doomed_settings = make_settings(
            doomed.url, model_path, metrics_port=0, metrics_host="127.0.0.1"
        )
        with running(daemon(doomed_settings, engine, "orphan", consolidate=False)) as d:
            assert d.wait_started(30) and d.metrics_port
            assert metrics(d.metrics_port)["memory_tiers_redis_up"] == 1
            doomed.stop()
            values = metrics(d.metrics_port)
            assert values["memory_tiers_redis_up"] == 0
            assert "memory_tiers_stream_lag" not in values


def test_a_busy_metrics_port_refuses_the_daemon(
    settings: Settings, model_path: Path, engine: EmbeddingEngine
) -> None:
    assert settings.redis_url
    with running(
        daemon(
            make_settings(settings.redis_url, model_path, metrics_port=0, metrics_host="127.0.0.1"),
            engine,
            "first",
        )
    ) as first:
        assert first.wait_started(30)
        taken = make_settings(
            settings.redis_url, model_path, metrics_port=first.metrics_port,
            metrics_host="127.0.0.1",
        )  # fmt: skip
        with pytest.raises(ConfigError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
            daemon(taken, engine, "second").run()


# -- stats and the series ----------------------------------------------------------------------


def test_stats_prints_tiers_stream_daemons_and_top_agents_and_plots_the_series(
    tmp_path: Path,
    redis_client: redis.Redis,
    settings: Settings,
    model_path: Path,
    engine: EmbeddingEngine,
) -> None:
    assert settings.redis_url
    daemon_settings = make_settings(
        settings.redis_url, model_path, stats_interval_s=0.2, heartbeat_ttl_s=0.6,
        drift_sample_every=1,
    )  # fmt: skip
    states = simulate_states(40, num_agents=4, seed=7)
    states += [dict(s, agent_id="agent-busy") for s in simulate_states(15, seed=8)]
    with running(daemon(daemon_settings, engine, "stats-d", consolidate=False)):
        wait_for(lambda: len(series(redis_client, KEYS)) >= 2, 10, "two samples")
        xadd_states(redis_client, states)
        xadd_raw(redis_client, {"state": "{}"})
        wait_for(lambda: redis_client.zcard(KEYS.time_index("stm")) == 55, 30, "55 stored")
        wait_for(lambda: series(redis_client, KEYS)[-1].tiers["stm"] == 55, 10, "a late sample")
        wait_for(lambda: heartbeats(redis_client, KEYS)[0].stored == 55, 10, "a late heartbeat")
        result = CliRunner().invoke(
            main, ["stats", "--top", "2", "--plot", str(tmp_path / "series.png")],
            env={"MT_REDIS_URL": settings.redis_url},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    tables = result.output.split("\n\n")
    assert [line.split() for line in tables[0].splitlines()] == [
        ["tier", "memories", "agents", "indexed", "indexing", "failures"],
        ["stm", "55", "5", "55", "0"],
        ["im", "0", "0", "0", "0"],
        ["ltm", "0", "0", "0", "0"],
    ]
    assert tables[1].splitlines()[1].split() == ["mt:states", "56", "0", "0", "1", "1"]
    daemon_row = tables[2].splitlines()[1].split()
    assert daemon_row[0] == "stats-d" and daemon_row[2] == str(os.getpid())
    assert daemon_row[3] == engine.version and daemon_row[5:7] == ["55", "1"]
    # Every state sampled (fewer than drift.RECENT_SAMPLES): the plain mean of their errors.
    features = engine.schema.extract_batch(states)
    vectors = engine.encode_features(features)
    live = {t: float(((engine.decode(vectors[t], t) - features) ** 2).mean()) for t in TIERS}
    held_out = engine.validation_mse
    assert held_out is not None
    assert [line.split() for line in tables[3].splitlines()] == [
        ["daemon", "tier", "live_mse", "held_out_mse", "ratio"],
        *(
            ["stats-d", t, f"{live[t]:.5f}", f"{held_out[t]:.5f}", f"{live[t] / held_out[t]:.1f}x"]
            for t in TIERS
        ),
    ]
    assert [line.split() for line in tables[4].splitlines()] == [
        ["model", "stm", "im", "ltm", "served"],
        [engine.version, "55", "0", "0", "yes"],
    ]
    assert [line.split() for line in tables[5].splitlines()] == [
        ["agent", "stm", "im", "ltm", "total"],
        ["agent-busy", "15", "0", "0", "15"],
        ["agent-000", "10", "0", "0", "10"],
    ]
    assert (tmp_path / "series.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "series.png (" in tables[-1]


def test_the_series_is_capped_and_rates_come_from_entries_read(
    redis_client: redis.Redis,
) -> None:
    stream = stream_status(redis_client, KEYS)
    for i in range(7):
        sample = Sample(1000.0 + 10 * i, {"stm": i, "im": 0, "ltm": 0}, 50 * i, 0, 0, 0)
        add_sample(redis_client, KEYS, sample, max_samples=5)
    samples = series(redis_client, KEYS)
    assert [s.tiers["stm"] for s in samples] == [2, 3, 4, 5, 6]
    assert ingest_rates(samples) == [(1030.0, 5.0), (1040.0, 5.0), (1050.0, 5.0), (1060.0, 5.0)]
    assert stream.length == 0 and not stream.group


def test_stats_plot_without_samples_says_why(settings: Settings, tmp_path: Path) -> None:
    assert settings.redis_url
    result = CliRunner().invoke(
        main, ["stats", "--plot", str(tmp_path / "x.png")], env={"MT_REDIS_URL": settings.redis_url}
    )
    assert result.exit_code == 1
    assert "no samples in mt:stats:series yet" in result.output
    assert not (tmp_path / "x.png").exists()


# -- logs and settings -------------------------------------------------------------------------


def test_json_logs_carry_the_settings_without_the_password_and_the_summary_numbers(
    redis_client: redis.Redis,
    settings: Settings,
    model_path: Path,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert settings.redis_url
    # The default user has no password, so Redis accepts any: the daemon runs with this one.
    url = settings.redis_url.replace("redis://", "redis://default:not-the-password@")
    caplog.set_level(logging.DEBUG)
    with running(daemon(make_settings(url, model_path), engine, "logged")) as d:
        xadd_states(redis_client, simulate_states(7, seed=9))
        xadd_raw(redis_client, {"state": "{}"})
        wait_for(lambda: d.stats.entries == 8, 10, "8 entries handled")
    stopped = next(r for r in caplog.records if "logged stopped" in r.getMessage())
    summary = json.loads(JsonFormatter().format(stopped))
    assert (summary["consumer"], summary["total_stored"], summary["total_dead_letters"]) == (
        "logged", 7, 1,
    )  # fmt: skip
    assert summary["message"].startswith("ingest logged stopped: 7 stored, 1 dead letters,")
    startup = next(r for r in caplog.records if "starting" in r.getMessage())
    line = json.loads(JsonFormatter().format(startup))
    assert line["level"] == "INFO" and line["logger"] == "memory_tiers.daemon"
    assert line["settings"]["redis_url"] == url.replace("not-the-password", "***")
    assert line["settings"]["batch_size"] == 256
    assert "redis_url=redis://default:***@" in line["message"]
    assert all("not-the-password" not in JsonFormatter().format(r) for r in caplog.records)


def test_heartbeats_must_outlive_a_blocking_read() -> None:
    with pytest.raises(ConfigError, match=r"MT_HEARTBEAT_TTL_S=2\.0: must be at least 3 x MT_BL"):
        Settings(heartbeat_ttl_s=2.0, block_ms=1000)


def test_heartbeats_are_found_through_the_registry_which_forgets_long_silent_consumers(
    redis_client: redis.Redis,
) -> None:
    now = time.time()
    silent = Heartbeat("silent", "h", 1, "v", now - 7200, now - 7200, 0, 0, 30.0)
    status_beat(redis_client, KEYS, silent)  # its key lives 30 s; its last beat was 2 h ago
    assert [b.consumer for b in heartbeats(redis_client, KEYS)] == ["silent"]
    live = dataclasses.replace(silent, consumer="live", started_at=now, at=now)
    status_beat(redis_client, KEYS, live)  # prunes consumers silent for over an hour
    assert redis_client.zrange(KEYS.heartbeats, 0, -1) == ["live"]
    assert [b.consumer for b in heartbeats(redis_client, KEYS)] == ["live"]
    clear_heartbeat(redis_client, KEYS, "live")
    assert heartbeats(redis_client, KEYS) == []
    assert redis_client.exists(KEYS.heartbeat("live"), KEYS.heartbeats) == 0


def test_a_refused_serve_says_why_in_a_json_log_line(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    result = CliRunner().invoke(
        main,
        ["--log-format", "json", "--model-path", str(tmp_path / "none.pt"), "serve"],
        env={"MT_REDIS_URL": redis_server.url},
    )
    assert result.exit_code == 2
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    fatal = [r for r in records if r["level"] == "CRITICAL"]
    assert len(fatal) == 1 and fatal[0]["logger"] == "memory_tiers.cli"
    assert fatal[0]["message"].startswith(
        f"memory-tiers serve stops: no model checkpoint at {tmp_path / 'none.pt'}"
    )


@pytest.mark.parametrize("protocol", [2, 3])
def test_model_versions_are_counted_per_tier(
    redis_server: EmbeddedRedis, store: TierStore, engine: EmbeddingEngine, protocol: int
) -> None:
    vectors = engine.encode_states(simulate_states(5, seed=10))
    records = [
        MemoryRecord(
            entry_id=f"{i + 1}-0",
            agent_id="a",
            agent_type="x",
            step=i,
            ts=i + 1,
            model_version="old" if i < 2 else "new",
            vector=vectors["im"][i],
        )
        for i in range(5)
    ]
    store.write("im", records)
    client = redis.Redis.from_url(redis_server.url, protocol=protocol)  # RESP2 or RESP3 replies
    assert model_versions(client, KEYS) == {"stm": {}, "im": {"new": 3, "old": 2}, "ltm": {}}
    client.close()


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["query", "--agent", "a", "--state", "{}"], "query"),
        (["init"], "init"),
        (["consolidate", "--now"], "consolidate"),
        (["reencode"], "reencode"),
        (["stats"], "stats"),
        (["train", "--from-stream"], "train --from-stream"),
    ],
)
def test_commands_that_need_a_redis_say_so(args: list[str], command: str) -> None:
    result = CliRunner().invoke(main, args, env={"MT_REDIS_URL": ""})
    assert result.exit_code == 2
    assert f"{command} needs MT_REDIS_URL (or memory-tiers --redis-url URL {command} ...)" in (
        result.output
    )


def test_ignored_state_fields_are_counted_logged_once_and_shown_by_stats(
    caplog: pytest.LogCaptureFixture, redis_client: redis.Redis, settings: Settings,
    model_path: Path, engine: EmbeddingEngine,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger="memory_tiers.ignored")
    assert settings.redis_url
    daemon_settings = make_settings(
        settings.redis_url, model_path, metrics_port=0, metrics_host="127.0.0.1",
        heartbeat_ttl_s=0.6,
    )  # fmt: skip
    states = [
        {
            "agent_id": "a",
            "text": f"note {i}",
            "health": 50,
            **({"tags": ["x"]} if i % 3 == 0 else {}),
        }
        for i in range(30)
    ]
    with running(daemon(daemon_settings, engine, "ignoring", consolidate=False)) as d:
        assert d.wait_started(30) and d.metrics_port
        xadd_states(redis_client, states[:15])
        wait_for(lambda: redis_client.zcard(KEYS.time_index("stm")) == 15, 30, "15 stored")
        xadd_states(redis_client, states[15:], first_step=15)
        wait_for(lambda: redis_client.zcard(KEYS.time_index("stm")) == 30, 30, "30 stored")
        wait_for(
            lambda: heartbeats(redis_client, KEYS)[0].ignored_fields == {"text": 30, "tags": 10},
            10, "a heartbeat with the counts",
        )  # fmt: skip
        scraped = metrics(d.metrics_port)
        result = CliRunner().invoke(main, ["stats"], env={"MT_REDIS_URL": settings.redis_url})
    assert scraped["memory_tiers_state_fields_ignored_total"] == 40
    assert result.exit_code == 0, result.output
    assert "ignored state fields (values): text (30), tags (10)\n" in result.output
    warned = [r.getMessage() for r in caplog.records if r.name == "memory_tiers.ignored"]
    assert [m.split(":")[0] for m in warned] == [
        "state field 'text' is not in the model's feature schema",
        "state field 'tags' is not in the model's feature schema",
    ]
