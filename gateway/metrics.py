"""Prometheus metrics of the whole server, served by the gateway.

Workers report counters since they started (and per room since the room was created) in
every heartbeat. The gateway turns those into its own monotonic totals: it adds the increase
since the previous report, and treats a lower value or a new pid as a restart that began
from zero. So `live_rtp_packets_total` and the per-worker counters never go backwards when a
worker is replaced, and nothing depends on when Prometheus scrapes.

Names follow the design document (`live_rooms`, `live_subscribers{room}`,
`live_rtp_bytes_total{room}`, `live_rtp_packets_total{room}`); live-webrtc-go exported the
same figures as `webrtc_*`. A room's series disappear a while after the room closed (the
reference server kept them forever).

Other modules add their own metrics to the app's registry, `app[REGISTRY_KEY]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.placement.directory import SessionDirectory, SessionEntry, WorkerInfo
from ipc.messages import Counters, Heartbeat, RoomStats

# How long the series of a closed room or a vanished worker stay exported.
RETIRED_SERIES_TTL_S = 300.0
# Expired series are also dropped between scrapes, so that a gateway nobody scrapes does not
# keep every room name it ever saw.
SWEEP_INTERVAL_S = 30.0

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)

# The counters a worker reports, per worker (Heartbeat) and per room (RoomStats), in order.
COUNTER_FIELDS: tuple[str, ...] = Counters.__struct_fields__
# Per worker, also the counters of the Heartbeat alone (the shared-memory plane's).
WORKER_COUNTER_FIELDS: tuple[str, ...] = (
    *COUNTER_FIELDS,
    "plane_packets_read",
    "plane_packets_lost",
)
Values = tuple[int, ...]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _values(counters: Counters, fields: tuple[str, ...] = COUNTER_FIELDS) -> Values:
    return tuple(getattr(counters, name) for name in fields)


def _index(name: str, fields: tuple[str, ...] = COUNTER_FIELDS) -> int:
    return fields.index(name)


@dataclass
class _Totals:
    """Monotonic sums of counters; per room, of every worker that reports the room (its home
    and its edges), each worker's increase added to the same values."""

    values: list[int] = field(default_factory=lambda: [0] * len(COUNTER_FIELDS))
    last_seen: float = 0.0


@dataclass
class WorkerReport:
    """The latest heartbeat of a worker, for gauges and the admin API."""

    pid: int
    heartbeat: Heartbeat
    started: float  # monotonic time the gateway first heard of this pid
    received: float


class TrafficTotals:
    """Monotonic per-worker and per-room counters built from worker heartbeats."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        directory: SessionDirectory | None = None,
    ) -> None:
        self.clock = clock
        self.directory = directory
        self._last_sweep = clock()
        # (worker id, room or "") -> (pid, last reported values)
        self._baseline: dict[tuple[str, str], tuple[int, Values]] = {}
        self.workers: dict[str, _Totals] = {}
        self.rooms: dict[str, _Totals] = {}
        self.reports: dict[str, WorkerReport] = {}

    def _advance(self, key: tuple[str, str], pid: int, values: Values, totals: _Totals) -> None:
        previous = self._baseline.get(key)
        base = previous[1] if previous is not None and previous[0] == pid else None
        for index, value in enumerate(values):
            before = 0 if base is None else base[index]
            # A lower value than before: the counter restarted from zero.
            totals.values[index] += value - before if value >= before else value
        self._baseline[key] = (pid, values)

    def observe(self, worker: WorkerInfo, heartbeat: Heartbeat) -> None:
        now = self.clock()
        worker_id, pid = worker.worker_id, worker.pid
        report = self.reports.get(worker_id)
        started = report.started if report is not None and report.pid == pid else now
        self.reports[worker_id] = WorkerReport(pid, heartbeat, started, now)

        totals = self.workers.get(worker_id)
        if totals is None:
            totals = self.workers[worker_id] = _Totals([0] * len(WORKER_COUNTER_FIELDS))
        totals.last_seen = now
        self._advance((worker_id, ""), pid, _values(heartbeat, WORKER_COUNTER_FIELDS), totals)

        live: set[str] = set()
        # Closed rooms first: a new room of the same name continues from a zero baseline.
        # Baselines are per worker and room: a room's home and edges each add their own
        # increase, so a room's counters sum over every worker that has it.
        for stats in sorted(heartbeat.room_stats, key=lambda r: not r.closed):
            room_totals = self.rooms.setdefault(stats.name, _Totals())
            room_totals.last_seen = now
            key = (worker_id, stats.name)
            self._advance(key, pid, _values(stats), room_totals)
            if stats.closed:
                del self._baseline[key]  # a room of that name starts again from zero
            else:
                live.add(stats.name)
        for key in [k for k in self._baseline if k[0] == worker_id and k[1]]:
            if key[1] not in live:
                del self._baseline[key]
        if self.directory is not None and now - self._last_sweep > SWEEP_INTERVAL_S:
            self.forget_stale(self.directory)

    def forget_stale(self, directory: SessionDirectory) -> None:
        """Drop series of rooms and workers gone for longer than RETIRED_SERIES_TTL_S."""
        self._last_sweep = self.clock()
        horizon = self._last_sweep - RETIRED_SERIES_TTL_S
        for name in [n for n, t in self.rooms.items() if t.last_seen < horizon]:
            if name not in directory.rooms:
                del self.rooms[name]
        for worker_id in [w for w, t in self.workers.items() if t.last_seen < horizon]:
            if worker_id not in directory.workers:
                del self.workers[worker_id]
                self.reports.pop(worker_id, None)
                for key in [k for k in self._baseline if k[0] == worker_id]:
                    del self._baseline[key]

    def room_report(self, room: str, worker_id: str | None) -> RoomStats | None:
        """`room` in the latest heartbeat of `worker_id` (its home); with None (a room whose
        home died), in that of any worker that reports it, one with tracks first."""
        if worker_id is not None:
            return self._room_report_of(worker_id, room)
        found = [
            stats
            for other in sorted(self.reports)
            if (stats := self._room_report_of(other, room)) is not None
        ]
        return max(found, key=lambda stats: bool(stats.tracks), default=None)

    def _room_report_of(self, worker_id: str, room: str) -> RoomStats | None:
        report = self.reports.get(worker_id)
        if report is None:
            return None
        for stats in report.heartbeat.room_stats:
            if stats.name == room and not stats.closed:
                return stats
        return None


class LiveCollector(Collector):
    """Everything derived from the directory and the workers' heartbeats, at scrape time."""

    def __init__(self, directory: SessionDirectory, totals: TrafficTotals) -> None:
        self.directory = directory
        self.totals = totals

    def collect(self) -> Iterable[Metric]:
        directory, totals = self.directory, self.totals
        totals.forget_stale(directory)
        yield GaugeMetricFamily("live_rooms", "Rooms that exist now", value=len(directory.rooms))
        yield GaugeMetricFamily(
            "live_workers", "Media workers registered and alive", value=len(directory.workers)
        )
        yield GaugeMetricFamily(
            "live_gateway_asyncio_tasks",
            "asyncio tasks alive in the gateway (a steady rise is a leak)",
            value=len(asyncio.all_tasks()),
        )
        subscribers = GaugeMetricFamily(
            "live_subscribers", "Viewers per room, pending ones included", labels=["room"]
        )
        for name, room in sorted(directory.rooms.items()):
            subscribers.add_metric([name], len(room.subscribers))
        yield subscribers
        sessions = GaugeMetricFamily(
            "live_sessions", "WHIP/WHEP sessions by kind and state", labels=["kind", "state"]
        )
        counts = {(k, s): 0 for k in ("publisher", "subscriber") for s in ("pending", "connected")}
        for session in directory.sessions.values():
            counts[(session.kind, "connected" if session.connected else "pending")] += 1
        for (kind, state), count in counts.items():
            sessions.add_metric([kind, state], count)
        yield sessions

        yield from _room_counters(totals)
        yield from _worker_counters(totals)
        yield from _worker_gauges(directory, totals)


# What the ICE mux counts that is not a refusal (sfu/aiortc_adapter/mux.py MuxCounters).
ICE_MUX_EVENTS = frozenset({"rebindings", "routes_evicted"})


def _ice_mux_metrics(reports: list[tuple[str, WorkerReport]]) -> Iterable[Metric]:
    """The workers' ICE mux (UDP_MUX_PORT/TCP_MUX_PORT): its counters restart with the
    worker, which Prometheus' rate() reads as a counter reset."""
    dropped = CounterMetricFamily(
        "live_worker_ice_mux_dropped",
        "Datagrams and ICE-TCP connections a worker's ICE mux refused or dropped, by reason",
        labels=["worker", "reason"],
    )
    events = CounterMetricFamily(
        "live_worker_ice_mux_events",
        "Sessions a worker's ICE mux moved to a client's new address (rebindings), and "
        "routes it forgot to keep a session's table bounded (routes_evicted)",
        labels=["worker", "event"],
    )
    routes = GaugeMetricFamily(
        "live_worker_ice_mux_routes",
        "Remote addresses a worker's ICE mux routes to a session now",
        labels=["worker"],
    )
    for worker_id, report in reports:
        for reason, count in sorted(report.heartbeat.ice_mux_counters.items()):
            family = events if reason in ICE_MUX_EVENTS else dropped
            family.add_metric([worker_id, reason], count)
        if report.heartbeat.ice_mux_counters:
            routes.add_metric([worker_id], report.heartbeat.ice_mux_routes)
    yield dropped
    yield events
    yield routes


def _room_counters(totals: TrafficTotals) -> Iterable[Metric]:
    described = (
        ("live_rtp_packets_total", "RTP packets received from publishers, by room", "packets_in"),
        ("live_rtp_bytes_total", "RTP bytes received from publishers, by room", "bytes_in"),
        ("live_rtp_sent_packets_total", "RTP packets forwarded to viewers, by room", "packets_out"),
        (
            "live_rtp_sent_bytes_total",
            "RTP payload bytes forwarded to viewers, by room",
            "bytes_out",
        ),
        (
            "live_rtp_dropped_packets_total",
            "Malformed or unroutable packets, by room",
            "dropped_packets",
        ),
    )
    for name, documentation, counter in described:
        family = CounterMetricFamily(name, documentation, labels=["room"])
        for room, room_totals in sorted(totals.rooms.items()):
            family.add_metric([room], room_totals.values[_index(counter)])
        yield family


def _worker_counters(totals: TrafficTotals) -> Iterable[Metric]:
    described = (
        ("live_worker_received_packets_total", "RTP packets received by a worker", "packets_in"),
        ("live_worker_received_bytes_total", "RTP bytes received by a worker", "bytes_in"),
        (
            "live_worker_forwarded_packets_total",
            "RTP packets forwarded by a worker",
            "packets_out",
        ),
        (
            "live_worker_forwarded_bytes_total",
            "RTP payload bytes forwarded by a worker",
            "bytes_out",
        ),
        ("live_worker_dropped_packets_total", "Packets a worker dropped", "dropped_packets"),
        (
            "live_worker_plane_packets_read_total",
            "RTP packets a worker read from other workers' shared-memory rings (as an edge)",
            "plane_packets_read",
        ),
        (
            "live_worker_plane_packets_lost_total",
            "Packets a worker lost from other workers' rings (lapped: it fell a ring behind)",
            "plane_packets_lost",
        ),
    )
    for name, documentation, counter in described:
        family = CounterMetricFamily(name, documentation, labels=["worker"])
        index = _index(counter, WORKER_COUNTER_FIELDS)
        for worker_id, worker_totals in sorted(totals.workers.items()):
            family.add_metric([worker_id], worker_totals.values[index])
        yield family


def _worker_gauges(directory: SessionDirectory, totals: TrafficTotals) -> Iterable[Metric]:
    live = [(w, totals.reports.get(w)) for w in sorted(directory.workers)]
    reports = [(w, r) for w, r in live if r is not None]
    now = totals.clock()
    described: tuple[tuple[str, str, Callable[[WorkerReport], float]], ...] = (
        ("live_worker_sessions", "Sessions on a worker", lambda r: r.heartbeat.sessions),
        ("live_worker_rooms", "Rooms on a worker", lambda r: len(r.heartbeat.rooms)),
        (
            "live_worker_event_loop_lag_seconds",
            "How late the worker's last heartbeat tick ran",
            lambda r: r.heartbeat.loop_lag_s,
        ),
        (
            "live_worker_ipc_round_trip_seconds",
            "Round trip of the worker's previous heartbeat request to the gateway",
            lambda r: r.heartbeat.ipc_round_trip_s,
        ),
        (
            "live_worker_cpu_ratio",
            "Fraction of one core the worker used",
            lambda r: r.heartbeat.cpu,
        ),
        ("live_worker_rss_bytes", "Resident memory of the worker", lambda r: r.heartbeat.rss_bytes),
        (
            "live_worker_forwarded_packets_per_second",
            "Forwarding rate over the last heartbeat interval",
            lambda r: r.heartbeat.forwarded_packets_per_s,
        ),
        ("live_worker_uptime_seconds", "Since the worker registered", lambda r: now - r.started),
        (
            "live_worker_asyncio_tasks",
            "asyncio tasks alive in the worker (a steady rise is a leak)",
            lambda r: r.heartbeat.asyncio_tasks,
        ),
        (
            "live_worker_session_capacity",
            "Sessions the worker's UDP port range allows; 0 = no fixed limit",
            lambda r: r.heartbeat.session_capacity,
        ),
        (
            "live_worker_edge_rooms",
            "Rooms a worker follows as an edge (their publisher is on another worker)",
            lambda r: r.heartbeat.edge_rooms,
        ),
        (
            "live_worker_plane_followers",
            "Edges reading the rooms a worker is home of (one per room and edge worker)",
            lambda r: r.heartbeat.followers,
        ),
    )
    for name, documentation, value_of in described:
        family = GaugeMetricFamily(name, documentation, labels=["worker"])
        for worker_id, report in reports:
            family.add_metric([worker_id], value_of(report))
        yield family
    yield from _ice_mux_metrics(reports)
    responsive = GaugeMetricFamily(
        "live_worker_responsive",
        "1 while the worker heartbeats in time, 0 while it is unresponsive",
        labels=["worker"],
    )
    for worker_id, worker in sorted(directory.workers.items()):
        responsive.add_metric([worker_id], float(worker.responsive))
    yield responsive


# live_session_{setup,connect,first_packet}_seconds: 5 ms to 10 s, then +Inf.
SESSION_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# live_session_phase_seconds: from 1 ms (the DTLS start after ICE, a lone answer) to 10 s.
PHASE_SECONDS_BUCKETS = (0.001, 0.0025, *SESSION_SECONDS_BUCKETS)
# The phases of a session's set-up timeline (ipc.messages.TIMELINE_MARKS, reported by its
# worker), each from one mark to the next: the label, its start (None: the offer reaching
# the worker) and its end.
SESSION_PHASES: tuple[tuple[str, str | None, str], ...] = (
    ("answer", None, "answer"),  # the worker answers the offer
    ("client_check", "answer", "ice.first_check"),  # 201, the client's own work, its check
    ("ice", "ice.first_check", "ice.connected"),  # checks until the client nominates
    ("dtls_wait", "ice.connected", "dtls.start"),
    ("dtls", "dtls.start", "dtls.connected"),  # the handshake: connected
    ("first_packet", "dtls.connected", "first_packet"),
)
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Not counted in live_http_responses_total: probes and scrapes would drown the API's answers
# (a starting gateway's /readyz answers 503 until its first worker registers).
UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def status_class(status: int) -> str:
    """The one label of live_http_responses_total: 204 -> 2xx, 503 -> 5xx."""
    return f"{min(max(status // 100, 1), 5)}xx"


class GatewayCounters:
    """The gateway's own metrics, in the app's registry: its decisions (refusals), the HTTP
    answers it gave, how long sessions took to set up, and whether it is draining."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.http_responses = Counter(
            "live_http_responses",
            "HTTP responses of the gateway's API listener by status class (1xx to 5xx), "
            "without /healthz, /readyz and /metrics",
            ["status_class"],
            registry=registry,
        )
        for label in STATUS_CLASSES:
            self.http_responses.labels(label)  # every class exported from the start, at 0
        self.session_setup = Histogram(
            "live_session_setup_seconds",
            "WHIP/WHEP POST received to 201 sent (successful offers only), by session kind",
            ["kind"],
            buckets=SESSION_SECONDS_BUCKETS,
            registry=registry,
        )
        self.session_connect = Histogram(
            "live_session_connect_seconds",
            "WHIP/WHEP session reserved (the POST's offer read and checked) to the worker "
            "reporting it connected (ICE and DTLS up), by session kind",
            ["kind"],
            buckets=SESSION_SECONDS_BUCKETS,
            registry=registry,
        )
        self.session_first_packet = Histogram(
            "live_session_first_packet_seconds",
            "WHIP/WHEP session reserved to its first RTP packet (a viewer: the first one its "
            "worker sent it; a publisher: the first one received), by session kind",
            ["kind"],
            buckets=SESSION_SECONDS_BUCKETS,
            registry=registry,
        )
        self.session_phase = Histogram(
            "live_session_phase_seconds",
            "Each phase of a session's set-up as its worker timed it, by session kind: "
            "answer (offer received to answer made), client_check (to the client's first "
            "STUN check), ice (to ICE connected), dtls_wait (to the DTLS handshake's start), "
            "dtls (to its end: connected), first_packet (to the first RTP packet)",
            ["kind", "phase"],
            buckets=PHASE_SECONDS_BUCKETS,
            registry=registry,
        )
        for kind in ("publisher", "subscriber"):
            self.session_setup.labels(kind)
            self.session_connect.labels(kind)
            self.session_first_packet.labels(kind)
            for phase, _start, _end in SESSION_PHASES:
                self.session_phase.labels(kind, phase)
        self.draining = Gauge(
            "live_draining",
            "1 while the gateway is draining (stopping: new sessions refused), else 0",
            registry=registry,
        )
        self.rate_limited = Counter(
            "live_http_rate_limited",
            "API requests refused with 429 by the per-client rate limit",
            registry=registry,
        )
        self.auth_refused = Counter(
            "live_http_auth_refused",
            "Requests refused for missing, invalid or insufficient credentials",
            ["status"],
            registry=registry,
        )
        self.sessions_refused = Counter(
            "live_sessions_refused",
            "New sessions refused by a cap",
            ["reason"],
            registry=registry,
        )
        # The auth hook (gateway/authhook.py) and webhooks (gateway/webhooks/).
        self.auth_hook_requests = Counter(
            "live_auth_hook_requests",
            "Publish and play decisions of the auth hook by outcome: allow, deny (401/403), "
            "error (other status), timeout, unreachable, cached (an allow reused, not asked)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("allow", "deny", "error", "timeout", "unreachable", "cached"):
            self.auth_hook_requests.labels(outcome)
        self.auth_hook_seconds = Histogram(
            "live_auth_hook_seconds",
            "Time the auth hook took to answer (or to fail)",
            buckets=SESSION_SECONDS_BUCKETS,
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "live_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, failed (retried later), "
            "expired (given up after WEBHOOK_MAX_AGE), dropped (the queue was full)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("delivered", "failed", "expired", "dropped"):
            self.webhook_deliveries.labels(outcome)
        self.webhook_queue_depth = Gauge(
            "live_webhook_queue_depth",
            "Webhook deliveries waiting (one per event and URL)",
            registry=registry,
        )
        self.webhook_delivery_seconds = Histogram(
            "live_webhook_delivery_seconds",
            "Webhook event created to delivered (2xx), retries included",
            buckets=(*SESSION_SECONDS_BUCKETS, 30.0, 60.0, 300.0, 3600.0),
            registry=registry,
        )

    def observe_auth_hook(self, outcome: str, seconds: float | None) -> None:
        """AuthHook.observe: one decision (seconds: None for a cached allow)."""
        self.auth_hook_requests.labels(outcome).inc()
        if seconds is not None:
            self.auth_hook_seconds.observe(seconds)

    def observe_connected(
        self, session: SessionEntry, timeline: Mapping[str, float] | None = None
    ) -> None:
        """Registry.on_connected: the worker reported `session` connected (once per session),
        with its timeline up to connected."""
        elapsed = time.monotonic() - session.created
        self.session_connect.labels(session.kind).observe(max(elapsed, 0.0))
        self._observe_phases(session.kind, timeline or {}, first_packet=False)

    def observe_first_packet(
        self, session: SessionEntry, timeline: Mapping[str, float] | None = None
    ) -> None:
        """Registry.on_first_packet: the worker forwarded `session`'s first packet."""
        elapsed = time.monotonic() - session.created
        self.session_first_packet.labels(session.kind).observe(max(elapsed, 0.0))
        self._observe_phases(session.kind, timeline or {}, first_packet=True)

    def _observe_phases(
        self, kind: str, timeline: Mapping[str, float], *, first_packet: bool
    ) -> None:
        """The phases whose two marks `timeline` has: those up to connected with the
        connected report, the last one with the first packet's (each once per session)."""
        for phase, start, end in SESSION_PHASES:
            if (end == "first_packet") != first_packet or end not in timeline:
                continue
            begun = 0.0 if start is None else timeline.get(start)
            if begun is not None:
                self.session_phase.labels(kind, phase).observe(max(timeline[end] - begun, 0.0))

    def middleware(self) -> Middleware:
        """Counts the app's answers by status class, except UNCOUNTED_PATHS; the outermost
        middleware, so that it sees the answers of the other middlewares too. Cheap: one
        set lookup and one counter increment."""
        responses = self.http_responses

        @web.middleware
        async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in UNCOUNTED_PATHS:
                return await handler(request)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                responses.labels(status_class(exc.status)).inc()
                raise
            except Exception:
                responses.labels("5xx").inc()  # aiohttp answers 500
                raise
            responses.labels(status_class(response.status)).inc()
            return response

        return count_responses


COUNTERS_KEY = web.AppKey("metrics_counters", GatewayCounters)
TOTALS_KEY = web.AppKey("metrics_totals", TrafficTotals)


def setup_metrics(app: web.Application, directory: SessionDirectory) -> TrafficTotals:
    """Create the app's registry (before any route is added) with the live-sfu collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    totals = TrafficTotals(directory=directory)
    registry.register(LiveCollector(directory, totals))
    app[REGISTRY_KEY] = registry
    app[COUNTERS_KEY] = GatewayCounters(registry)
    app[TOTALS_KEY] = totals
    return totals


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return serve
