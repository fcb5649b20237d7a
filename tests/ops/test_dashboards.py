"""The operator's Grafana dashboard (ops/grafana/live-sfu.json) and Prometheus alert rules
(ops/prometheus/alerts.yml) against the metrics a real gateway exports.

* promtool (Debian's `prometheus` package, installed by scripts/test.sh) checks the rules and
  runs their unit tests (ops/prometheus/alerts_test.yml): each alert fires on one series and
  not on another. Without promtool these tests skip, and fail under CI=true;
* a gateway with one worker carries a WHIP publisher and WHEP viewers, and every metric name
  that a dashboard panel or an alert rule reads must be in its /metrics;
* live_session_setup_seconds counts one observation per 201 and kind, nothing for a refused
  POST; live_session_connect_seconds one per session the worker reported connected, and
  live_session_first_packet_seconds one per session at its first packet;
* in process (make_app): live_draining follows the drain, and live_http_responses_total
  counts the API's answers by class, not the /readyz probes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.http.app import make_app
from gateway.http.drain import DRAIN_KEY
from gateway.placement.directory import Directory
from gateway.placement.registry import Registry
from ipc.channel import router_channel
from testkit.processes import REPO, GatewayProcess, start_gateway
from tests.support.clients import run_peer, skip_or_fail, spawn_peer
from tests.support.sdp import OFFER

DASHBOARD = REPO / "ops" / "grafana" / "live-sfu.json"
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "ops" / "prometheus" / "alerts_test.yml"
# Series Prometheus itself adds to every target; not in any /metrics.
SYNTHETIC = frozenset({"up"})
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"})
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- PromQL: which metrics an expression reads ---------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: label matchers, ranges, grouping labels,
    strings, dashboard variables and function names stripped."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\boffset\s+\w+", "", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group()
        if token in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # an operator, or a function being called
        names.add(token)
    return names


def test_metric_names_parses_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, kind) (rate(live_a_bucket{instance=~"$x", '
        'kind="publisher"}[$__rate_interval]))) / on(instance) group_left(worker) live_b '
        "> 1e3 and ignoring(worker) max_over_time(up[30m] offset 5m) unless bool live_c:rate5m"
    )
    assert metric_names(expr) == {"live_a_bucket", "live_b", "up", "live_c:rate5m"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions: list[str] = []
    for panel in _panels(dashboard["panels"]):
        expressions += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            # label_values(SELECTOR, label): the selector names the metric.
            expressions.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", text))
    return expressions


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


# --- the files on their own ----------------------------------------------------------------


def test_dashboard_is_importable_with_its_datasource_as_a_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids: list[int] = []
    for panel in _panels(dashboard["panels"]):
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test checks silent"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        skip_or_fail("promtool is missing", "scripts/test.sh apt-get installs prometheus")
    return binary


def test_promtool_checks_the_alert_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- against a real gateway ----------------------------------------------------------------


@dataclass
class Scrapes:
    """/metrics of one gateway: before any session, after a publisher and one viewer, after
    a second viewer and a refused POST."""

    before: Samples
    one_viewer: Samples
    two_viewers: Samples
    families: set[str]
    sample_names: set[str]


def scrape(gateway: GatewayProcess) -> tuple[Samples, set[str]]:
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(gateway: GatewayProcess, done: Any, what: str, within: float = 15.0) -> Samples:
    deadline = time.monotonic() + within
    while True:
        samples, _ = scrape(gateway)
        if done(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def post_status(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapes]:
    gateway = start_gateway(tmp_path_factory.mktemp("ops"), workers=1)
    try:
        # The worker's series exist from its first heartbeat on.
        before = scrape_until(
            gateway,
            lambda s: any(name == "live_worker_responsive" for name, _ in s),
            "the worker's first heartbeat",
        )
        room = "ops-dashboards"
        publisher = spawn_peer("publish", gateway.url, room, "--seconds", "12")
        try:
            viewer = ("--seconds", "3", "--stop-when-satisfied", "--min-video-frames", "10")
            first = run_peer("view", gateway.url, room, *viewer, timeout=60)
            assert first["ok"], first
            connected = ("live_session_connect_seconds_count", (("kind", "subscriber"),))
            one_viewer = scrape_until(gateway, lambda s: s.get(connected, 0) >= 1, "connected")
            second = run_peer("view", gateway.url, room, *viewer, timeout=60)
            assert second["ok"], second
            # Refused POSTs: a second publisher is not asked for here (it would replace
            # nothing); a wrong content type and a room that does not exist are.
            endpoint = gateway.url + "/api/whip/publish/" + room
            assert post_status(endpoint, b"v=0\r\n", "text/plain") == 415
            viewer_of_nothing = gateway.url + "/api/whep/play/no-such-room"
            assert post_status(viewer_of_nothing, b"v=0\r\n", "application/sdp") >= 400
            first_packets = ("live_session_first_packet_seconds_count", (("kind", "subscriber"),))
            two_viewers = scrape_until(
                gateway,
                lambda s: s.get(connected, 0) >= 2 and s.get(first_packets, 0) >= 2,
                "connected, first packet",
            )
            assert publisher.result(timeout=60)["ok"]
        finally:
            publisher.kill()
        samples, families = scrape(gateway)
        names = {name for name, _ in samples}
        yield Scrapes(before, one_viewer, two_viewers, families, names)
    finally:
        gateway.stop()


def exported(name: str, scraped: Scrapes) -> bool:
    if name in SYNTHETIC or name in scraped.sample_names or name in scraped.families:
        return True
    base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)
    return base is not None and base in scraped.families


def test_every_metric_the_dashboard_and_alerts_read_is_exported(scrapes: Scrapes) -> None:
    sources = [("dashboard", expr) for expr in dashboard_expressions()]
    sources += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    read: dict[str, str] = {}
    for where, expr in sources:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert re.match(r"^(live_|process_|python_)|^up$", name), f"{where}: {name!r}"
            read.setdefault(name, where)
    missing = {name: where for name, where in read.items() if not exported(name, scrapes)}
    assert not missing, f"read but not in /metrics: {missing}"
    # The four shared-memory plane series and the new ones are on the dashboard.
    for name in (
        "live_worker_plane_packets_read_total",
        "live_worker_plane_packets_lost_total",
        "live_worker_edge_rooms",
        "live_worker_plane_followers",
        "live_session_setup_seconds_bucket",
        "live_session_connect_seconds_bucket",
        "live_http_responses_total",
        "live_draining",
    ):
        assert name in read, f"{name} is on no panel and in no rule"


def test_session_setup_and_connect_histograms_count_each_session(scrapes: Scrapes) -> None:
    setup, connect = "live_session_setup_seconds", "live_session_connect_seconds"
    for kind in ("publisher", "subscriber"):
        assert value(scrapes.before, setup + "_count", kind=kind) == 0
        assert value(scrapes.before, connect + "_count", kind=kind) == 0
    one, two = scrapes.one_viewer, scrapes.two_viewers
    # One observation per 201: the refused POSTs (415, 404) add none.
    assert value(one, setup + "_count", kind="publisher") == 1
    assert value(one, setup + "_count", kind="subscriber") == 1
    assert value(two, setup + "_count", kind="publisher") == 1
    assert value(two, setup + "_count", kind="subscriber") == 2
    assert value(two, connect + "_count", kind="publisher") == 1
    assert value(two, connect + "_count", kind="subscriber") == 2
    # The first packet: sent to each viewer, received from the publisher; once per session.
    first_packet = "live_session_first_packet_seconds"
    assert value(scrapes.before, first_packet + "_count", kind="subscriber") == 0
    assert value(two, first_packet + "_count", kind="publisher") == 1
    assert value(two, first_packet + "_count", kind="subscriber") == 2
    for name in (setup, connect, first_packet):
        for kind in ("publisher", "subscriber"):
            total = value(two, name + "_sum", kind=kind)
            count = value(two, name + "_count", kind=kind)
            assert 0 < total < 10 * count, (name, kind, total)
            # Cumulative buckets: +Inf holds every observation.
            assert value(two, name + "_bucket", kind=kind, le="+Inf") == count
            assert value(two, name + "_bucket", kind=kind, le="10.0") == count


def test_http_responses_are_counted_by_status_class(scrapes: Scrapes) -> None:
    responses = "live_http_responses_total"
    # Every class exists from the start, at 0: the /readyz polls (503 until the worker
    # registered) and the /metrics scrapes are not counted.
    for status_class in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert value(scrapes.before, responses, status_class=status_class) == 0
        assert (responses, (("status_class", status_class),)) in scrapes.before
    before_4xx = value(scrapes.one_viewer, responses, status_class="4xx")
    # At least the 415 and the viewer of a room that does not exist.
    assert value(scrapes.two_viewers, responses, status_class="4xx") >= before_4xx + 2
    assert value(scrapes.two_viewers, responses, status_class="2xx") >= 3  # the 201s at least
    assert value(scrapes.two_viewers, responses, status_class="5xx") == 0
    assert value(scrapes.two_viewers, "live_draining") == 0


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_draining_gauge_follows_the_drain_and_probes_are_not_counted(
    tmp_path: Path,
) -> None:
    config = load_config(["--workers", "0"], environ={})
    directory = Directory(config.workers.spread_rooms, config.workers.spread_threshold)
    registry = Registry(config, router_channel([f"ipc://{tmp_path}/gateway.sock"]), directory)
    app = make_app(config, registry)
    async with TestClient(TestServer(app)) as http:

        async def metrics() -> Samples:
            async with http.get("/metrics") as response:
                assert response.status == 200
                return parse(await response.text())

        async with http.get("/readyz") as response:
            assert response.status == 503  # no worker: a probe, not counted
        async with http.post("/api/whip/publish/r", data=b"x") as response:
            assert response.status == 415
        async with http.get("/api/rooms") as response:
            assert response.status == 200
        samples = await metrics()
        assert value(samples, "live_draining") == 0
        responses = "live_http_responses_total"
        assert value(samples, responses, status_class="4xx") == 1
        assert value(samples, responses, status_class="2xx") == 1
        assert value(samples, responses, status_class="5xx") == 0
        app[DRAIN_KEY].start()
        sdp = {"Content-Type": "application/sdp"}
        async with http.post("/api/whip/publish/r", data=OFFER, headers=sdp) as response:
            assert response.status == 503  # shutting_down
        samples = await metrics()
        assert value(samples, "live_draining") == 1
        assert value(samples, responses, status_class="5xx") == 1
    await registry.channel.close()
