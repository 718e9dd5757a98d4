"""
Prometheus metrics: a real daemon scraped over HTTP on loopback, its text
parsed by prometheus_client's parser and linted by ``promtool check
metrics``; the per-agent figures checked against the rollups in SQL.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon import metrics, rollup_metrics
from livemon.exceptions import ConfigError
from livemon.migrate.migrator import migrate
from tests.daemon.conftest import coordinators, recorded
from tests.livemon.migrate import legacy_fixtures as fx

REQUESTS = 300  # per coordinator


class TestAddress:
    @pytest.mark.parametrize(
        ("text", "bound"),
        [
            ("127.0.0.1:9464", ("127.0.0.1", 9464)),
            ("[::1]:9464", ("::1", 9464)),
            ("localhost:0", ("localhost", 0)),
            ("127.8.9.1:80", ("127.8.9.1", 80)),
            ("remote:0.0.0.0:9464", ("0.0.0.0", 9464)),
            ("", None),
        ],
    )
    def test_loopback_or_asked_for(self, text, bound):
        """Loopback addresses, and any address written remote:, bind."""
        assert metrics.parse_address(text) == bound

    @pytest.mark.parametrize("text", ["0.0.0.0:9464", "192.0.2.7:9464"])
    def test_other_addresses_refused_saying_how(self, text):
        """A non-loopback address is refused; the message names the
        loopback alternative and the explicit opt-in."""
        with pytest.raises(ConfigError, match="not a loopback") as error:
            metrics.parse_address(text)
        assert "127.0.0.1" in str(error.value)
        assert f"remote:{text}" in str(error.value)

    @pytest.mark.parametrize(
        "text", ["9464", "127.0.0.1:", ":9464", "127.0.0.1:99999", "remote:"]
    )
    def test_malformed(self, text):
        """Not HOST:PORT: a ConfigError that shows the form."""
        with pytest.raises(ConfigError, match="metrics_address"):
            metrics.parse_address(text)


class TestHistogramBuckets:
    def test_cumulative_and_conservative(self):
        """Rollup buckets count under a bound only when wholly below it;
        the counts never fall and +Inf holds every one."""
        # bucket b spans [2**(b/8) - 1, 2**((b+1)/8) - 1) milliseconds
        buckets = [(0, 3), (60, 5), (61, 7), (200, 11)]
        got = dict(rollup_metrics._cumulative(buckets))
        assert got["0.005"] == 3  # bucket 0 ends at 0.09 ms
        top_60_s = (2 ** (61 / 8) - 1) / 1e3  # 0.18 s
        assert got["0.25"] == 3 + 5 + 7 and top_60_s < 0.25
        assert got["0.1"] == 3
        assert got["+Inf"] == 26
        counts = list(got.values())
        assert counts == sorted(counts)


def collected(figures, db_path, now=1000.0):
    """The samples a DaemonCollector yields for these figures."""
    collector = metrics.DaemonCollector(lambda: figures, db_path, lambda: now)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


class TestCollector:
    def test_drops_spills_and_sinks_when_published(self, tmp_path):
        """Drops per reason, spilled records and per-sink rows and lag
        appear as the daemon publishes them (spill and forwarding)."""
        figures = {
            "published_at": 999.0,
            "drops": {"ring_full": 1, "spill_cap": 2, "disk_full": 3,
                      "io_error": 4, "spilled": 50},
            "sinks": [{"sink": "clickhouse", "shipped_rows": 70,
                       "lag_rows": 5, "lag_s": 1.5, "failures": 2,
                       "failed_attempts": 2},
                      {"sink": "otlp", "refused": {"spans_rejected": 3,
                                                   "spans_too_large": 1}}],
        }  # fmt: skip
        got = collected(figures, str(tmp_path / "none.db"))
        for n, reason in enumerate(metrics.DROP_REASONS, 1):
            key = ("livemon_dropped_records_total", (("reason", reason),))
            assert got[key] == n
        assert got[("livemon_spilled_records_total", ())] == 50
        sink = (("sink", "clickhouse"),)
        assert got[("livemon_sink_shipped_rows_total", sink)] == 70
        assert got[("livemon_sink_failures_total", sink)] == 2
        assert got[("livemon_sink_lag_rows", sink)] == 5
        assert got[("livemon_sink_lag_seconds", sink)] == 1.5
        refused = "livemon_sink_refused_spans_total"
        for reason, count in (("rejected", 3), ("too_large", 1)):
            key = (refused, (("reason", reason), ("sink", "otlp")))
            assert got[key] == count
        assert (refused, (("reason", "rejected"), *sink)) not in got
        assert got[("livemon_up", ())] == 1
        assert got[("livemon_rollups_readable", ())] == 0  # no database

    @pytest.mark.parametrize(
        "figures",
        [None, {"published_at": 900.0}, {"published_at": 999.0,
                                         "last_error": "disk full"}],
        ids=["none-yet", "stale", "in-trouble"],
    )  # fmt: skip
    def test_not_up(self, figures, tmp_path):
        """No figures yet, figures older than STALE_AFTER_S, or a
        database in trouble: livemon_up is 0, and build info is there."""
        got = collected(figures, str(tmp_path / "none.db"))
        assert got[("livemon_up", ())] == 0
        assert [k for k in got if k[0] == "livemon_build_info"]


def promtool_check(text: str) -> None:
    """``promtool check metrics`` (Prometheus's own linter) passes
    ``text``; skipped where promtool is missing, except in CI."""
    promtool = shutil.which("promtool")
    if promtool is None and not os.environ.get("CI"):
        pytest.skip("promtool not installed (apt-get install prometheus)")
    assert promtool, "CI installs promtool (.ci/run)"
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == "", lint.stdout


def scrape(url: str) -> str:
    """GET the metrics page."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return answer.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, through the official parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def rollup_sums(db_path: str) -> dict[str, tuple[float, float, float]]:
    """Per agent text ('' for every request): requests, failures, timed,
    straight from the rollup tables."""
    with contextlib.closing(
        sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    ) as db:
        rows = db.execute(
            "SELECT coalesce(l.text, ''), total(r.requests), "
            "total(r.known - r.successes), total(r.timed) FROM rollup AS r "
            "LEFT JOIN labels AS l ON l.label_id = r.agent GROUP BY r.agent"
        ).fetchall()
    return {agent: (n, failed, timed) for agent, n, failed, timed in rows}


@pytest.fixture
def served(start_daemon, daemon_env):
    """A daemon serving metrics on an ephemeral loopback port, after two
    coordinators' requests were drained; (daemon, url, scraped text)."""
    env = dict(daemon_env, LIVEMON_METRICS_ADDRESS="127.0.0.1:0")
    daemon = start_daemon(env)
    total = recorded(coordinators(env, 2, REQUESTS))
    daemon.wait_until(lambda: daemon.status().get("drained", 0) >= total)
    url = daemon.status()["metrics_url"]
    assert url.startswith("http://127.0.0.1:")
    yield daemon, url, scrape(url)
    assert daemon.stop() == 0


class TestServedByTheDaemon:
    def test_daemon_figures_in_base_units(self, served):
        """Up, build info, counters with _total and no _created, gauges
        in bytes and seconds, one fill gauge per lane."""
        daemon, _, text = served
        got = samples(text)
        status = daemon.status()
        assert got[("livemon_up", ())] == 1
        (build,) = [k for k in got if k[0] == "livemon_build_info"]
        assert dict(build[1])["version"] and got[build] == 1
        assert got[("livemon_drained_records_total", ())] >= 2 * REQUESTS
        assert (
            got[("livemon_dropped_records_total", (("reason", "ring_full"),))]
            == 0
        )
        assert got[("livemon_database_size_bytes", ())] > 4096
        assert 0 <= got[("livemon_batch_latency_seconds", ())] < 60
        assert got[("livemon_start_time_seconds", ())] == pytest.approx(
            status["started_at"]
        )
        fills = [k for k in got if k[0] == "livemon_ring_fill_ratio"]
        assert len(fills) == status["lanes"]
        assert not [k for k in got if k[0].endswith("_created")]
        assert all(
            k[0].endswith("_total")
            for family in text_string_to_metric_families(text)
            if family.type == "counter"
            for k in [(s.name,) for s in family.samples]
        )

    def test_per_agent_figures_equal_the_rollups(self, served):
        """Requests, failures and latency counts per agent are the
        rollups' sums; histograms are cumulative up to +Inf = _count."""
        daemon, _, text = served
        got = samples(text)
        sums = rollup_sums(daemon.db)
        every = sums.pop("")
        assert got[("livemon_requests_total", ())] == every[0] > 0
        assert got[("livemon_request_failures_total", ())] == every[1] > 0
        assert got[("livemon_request_latency_seconds_count", ())] == every[2]
        assert sums  # the demo's agents
        for agent, (n, failed, timed) in sums.items():
            key = (("agent", agent),)
            assert got[("livemon_agent_requests_total", key)] == n
            assert got[("livemon_agent_failures_total", key)] == failed
            assert got[("livemon_agent_latency_seconds_count", key)] == timed
            buckets = sorted(
                (float(dict(k[1])["le"]), v)
                for k, v in got.items()
                if k[0] == "livemon_agent_latency_seconds_bucket"
                and dict(k[1])["agent"] == agent
            )
            counts = [v for _, v in buckets]
            assert counts == sorted(counts) and counts[-1] == timed
            assert got[("livemon_agent_latency_seconds_sum", key)] > 0

    def test_promtool_finds_nothing_to_lint(self, served):
        """``promtool check metrics`` (Prometheus's own linter) passes."""
        _, _, text = served
        promtool_check(text)

    def test_scraped_again_counters_never_fall(self, served):
        """A second scrape: every counter is at least what it was."""
        _, url, text = served
        first, again = samples(text), samples(scrape(url))
        counters = [k for k in first if k[0].endswith("_total")]
        assert counters
        assert all(again[k] >= first[k] for k in counters)


class TestRollupCache:
    def test_read_once_per_interval(self, tmp_path, monkeypatch):
        """Within ROLLUP_CACHE_S the rollups are not read again (a row
        added meanwhile is not seen); past it, they are."""
        legacy, db_path = tmp_path / "agent_performance.db", tmp_path / "u.db"
        fx.performance_db(legacy, good=50)
        migrate(str(db_path), [str(legacy)])
        reader = rollup_metrics.RollupReader(str(db_path))

        def every_request():
            got = {
                (s.name, tuple(s.labels.items())): s.value
                for family in reader.metrics()
                for s in family.samples
            }
            return got[("livemon_request_latency_seconds_count", ())]

        before = every_request()
        with contextlib.closing(sqlite3.connect(db_path)) as db, db:
            db.execute("INSERT INTO rollup_latency VALUES (1, 0, 5, 7)")
        assert every_request() == before  # cached
        monkeypatch.setattr(rollup_metrics, "ROLLUP_CACHE_S", 0.0)
        assert every_request() == before + 7


class TestRefusals:
    def test_non_loopback_refused_at_start(self, daemon_env):
        """start with a public address: a usage error (exit 2) that says
        what to write instead, before anything starts; no traceback."""
        started = subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon",
                "start",
                "--foreground",
                "--metrics-address",
                "0.0.0.0:9464",
            ],
            env=daemon_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert started.returncode == 2
        assert "not a loopback address" in started.stderr
        assert "remote:0.0.0.0:9464" in started.stderr
        assert "Traceback" not in started.stderr

    def test_port_in_use_leaves_the_drain_running(
        self, start_daemon, daemon_env
    ):
        """Another program holds the port: the daemon still starts and
        drains, logs the trouble and serves nothing (it retries)."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            env = dict(daemon_env, LIVEMON_METRICS_ADDRESS=f"127.0.0.1:{port}")
            daemon = start_daemon(env)
            total = recorded(coordinators(env, 1, 50))
            daemon.wait_until(lambda: daemon.count() >= total)
            assert daemon.status()["metrics_url"] is None
            daemon.wait_until(
                lambda: (
                    f"metrics on 127.0.0.1:{port}"
                    in pathlib.Path(daemon.env["LIVEMON_LOG_FILE"]).read_text()
                )
            )
            # ... and so does status, for whoever does not read logs.
            daemon.wait_until(lambda: daemon.status().get("metrics_error"))
            shown = subprocess.run(
                [sys.executable, "-m", "daemon", "status"],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            assert "METRICS" in shown and str(port) in shown
            assert daemon.stop() == 0


def counter_samples(reader) -> dict[tuple, float]:
    """Every counter and histogram sample a RollupReader yields."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in reader.metrics()
        if family.type in ("counter", "histogram")
        for s in family.samples
    }


class TestRollupCounters:
    @pytest.fixture
    def reader(self, tmp_path, monkeypatch):
        """A reader of migrated rollups, reading them on every scrape."""
        legacy, db_path = tmp_path / "agent_performance.db", tmp_path / "u.db"
        fx.performance_db(legacy, good=50)
        migrate(str(db_path), [str(legacy)])
        monkeypatch.setattr(rollup_metrics, "ROLLUP_CACHE_S", 0.0)
        return rollup_metrics.RollupReader(str(db_path)), db_path

    def test_never_fall_when_retention_removes_hours(self, reader):
        """Retention archives old events and rebuilds their hours'
        rollups (empty): the counters must not fall (Prometheus reads a
        fall as a reset and shows the whole total as a spike); what is
        recorded afterwards still adds."""
        reader, db_path = reader
        before = counter_samples(reader)
        with contextlib.closing(sqlite3.connect(db_path)) as db, db:
            for table in ("rollup", "rollup_latency"):  # all but the last
                db.execute(
                    f"DELETE FROM {table} WHERE hour < "
                    f"(SELECT max(hour) FROM {table})"
                )
        after = counter_samples(reader)
        assert after  # the series stay, at their values
        assert all(after[k] >= before[k] for k in after if k in before)
        assert after == {k: v for k, v in before.items() if k in after}
        with contextlib.closing(sqlite3.connect(db_path)) as db, db:
            db.execute(
                "INSERT INTO rollup_latency SELECT max(hour), 0, 3, 7 "
                "FROM rollup_latency WHERE true ON CONFLICT DO UPDATE "
                "SET requests = requests + 7"
            )
        key = ("livemon_request_latency_seconds_count", ())
        assert counter_samples(reader)[key] == before[key] + 7

    def test_a_path_with_uri_characters(self, tmp_path):
        """A database path holding '#', '?' or '%' is read (a URI
        without quoting opened another file: never readable)."""
        folder = tmp_path / "a#b?c%41"
        folder.mkdir()
        legacy, db_path = tmp_path / "agent_performance.db", folder / "u.db"
        fx.performance_db(legacy, good=5)
        migrate(str(db_path), [str(legacy)])
        reader = rollup_metrics.RollupReader(str(db_path))
        got = {s.name: s.value for f in reader.metrics() for s in f.samples}
        assert got["livemon_rollups_readable"] == 1


def rollups_of(names: list[str]) -> sqlite3.Connection:
    """The rollup tables' columns the metrics read, agent i (from 1)
    with i requests, i - 1 of them failed, each in latency bucket 10."""
    db = sqlite3.connect(":memory:")
    db.executescript(
        "CREATE TABLE labels (label_id INTEGER, text TEXT);"
        "CREATE TABLE rollup (hour, agent, category, requests, known, "
        "successes, time_ms_sum);"
        "CREATE TABLE rollup_latency (hour, agent, bucket, requests);"
    )
    total = len(names) * (len(names) + 1) // 2
    db.execute("INSERT INTO rollup VALUES (1, 0, 0, ?, ?, 0, 0)", (total,) * 2)
    for i, name in enumerate(names, 1):
        db.execute("INSERT INTO labels VALUES (?, ?)", (i, name))
        db.execute("INSERT INTO rollup VALUES (1, ?, 0, ?, ?, 1, ?)", (i,) * 4)
        db.execute("INSERT INTO rollup_latency VALUES (1, ?, 10, ?)", (i, i))
    return db


def exposition(families) -> str:
    """The text a scrape of ``families`` returns."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(type("C", (), {"collect": lambda self: families})())
    return generate_latest(registry).decode()


class TestAgentSeries:
    def test_names_any_text_round_trip(self):
        """Quotes, newlines, backslashes, braces and non-ASCII in agent
        names come back intact through the official parser."""
        odd = ['a"b', "c\nd", "back\\slash", "x}y{", "caf\u00e9 \U0001f642"]
        with contextlib.closing(rollups_of(odd)) as db:
            text = exposition(rollup_metrics.rollup_metrics(db))
        found = samples(text)
        for name in odd:
            key = ("livemon_agent_requests_total", (("agent", name),))
            assert key in found
        promtool_check(text)

    def test_bounded_with_the_rest_summed(self):
        """A name per request (thousands of agents): at most MAX_AGENTS
        agent series, the most requested kept, the rest summed as
        OTHER_AGENTS, every total still equal to the rollups'."""
        count = 3 * rollup_metrics.MAX_AGENTS
        names = [f"agent-{i}" for i in range(1, count + 1)]
        with contextlib.closing(rollups_of(names)) as db:
            found = samples(exposition(rollup_metrics.rollup_metrics(db)))
        requests = {
            dict(labels)["agent"]: value
            for (name, labels), value in found.items()
            if name == "livemon_agent_requests_total"
        }
        assert len(requests) == rollup_metrics.MAX_AGENTS
        assert requests[f"agent-{count}"] == count  # the most requested
        assert sum(requests.values()) == count * (count + 1) // 2
        other = (("agent", rollup_metrics.OTHER_AGENTS),)
        kept = rollup_metrics.MAX_AGENTS - 1
        rest = (count - kept) * (count - kept + 1) // 2
        assert requests[rollup_metrics.OTHER_AGENTS] == rest
        inf = (*other, ("le", "+Inf"))
        assert found[("livemon_agent_latency_seconds_bucket", inf)] == rest
        assert found[("livemon_agent_failures_total", other)] == rest - (
            count - kept
        )
