"""The aiohttp applications: the gateway's HTTP surface (`make_app`) and the METRICS_ADDR
listener (`make_metrics_app`)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from common import tracing
from gateway.cluster import setup_cluster
from gateway.config import GatewayConfig
from gateway.http import control, whep_events, whip_whep
from gateway.http.auth import AUTH_KEY, Authenticator, setup_access
from gateway.http.cors import ORIGINS_KEY, AllowedOrigins, cors_middleware
from gateway.http.drain import DRAIN_KEY, Drain, drain_middleware
from gateway.http.errors import error_middleware
from gateway.http.openapi import openapi_handler
from gateway.http.ratelimit import RateLimit, rate_limit_middleware
from gateway.http.recordings import setup_recordings
from gateway.http.static import add_static_ui
from gateway.http.tracing import tracing_middleware
from gateway.metrics import COUNTERS_KEY, REGISTRY_KEY, metrics_handler, setup_metrics
from gateway.placement.registry import Registry
from gateway.webhooks import setup_webhooks

RATE_LIMIT_KEY = web.AppKey("rate_limit", RateLimit)
CONTROL_KEY = web.AppKey("control", control.ControlApi)


def apply_live_config(app: web.Application, config: GatewayConfig) -> None:
    """Make every request from now on read `config` (a reload; gateway/reload.py decides
    which of its values may differ from the running ones). Synchronous, so no request sees
    half of it."""
    limits = config.limits
    app[RATE_LIMIT_KEY].configure(
        limits.rate_limit_rps, limits.rate_limit_burst, limits.trusted_proxies
    )
    app[ORIGINS_KEY].origins = frozenset(config.http.allowed_origin)
    app[AUTH_KEY].configure(config)
    app[whip_whep.API_KEY].config = config  # caps, ICE servers, trusted proxies
    app[CONTROL_KEY].config = config


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    """The METRICS_ADDR listener: /metrics alone."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/metrics", metrics_handler(registry))
    return app


def make_app(config: GatewayConfig, registry: Registry) -> web.Application:
    # client_max_size bounds aiohttp's own readers; ours enforce max_body_bytes themselves.
    app = web.Application(
        middlewares=[drain_middleware, cors_middleware, error_middleware],
        client_max_size=config.http.max_body_bytes,
    )
    drain = app[DRAIN_KEY] = Drain()
    # The metrics registry exists before any route, so every setup below can add collectors.
    totals = setup_metrics(app, registry.directory)
    registry.on_heartbeat = totals.observe
    counters = app[COUNTERS_KEY]
    registry.on_connected = counters.observe_connected
    registry.on_first_packet = counters.observe_first_packet
    counters.draining.set_function(lambda: float(drain.draining))
    # Outermost, so that it counts the answers of the other middlewares too.
    app.middlewares.insert(0, counters.middleware())
    if tracing.enabled():  # OTEL_* asked for tracing: the WHIP/WHEP POSTs' server spans
        app.middlewares.insert(0, tracing_middleware)
    limits = config.limits
    # Installed even at RATE_LIMIT_RPS=0 (it then passes everything): a reload may set it.
    rate_limit = app[RATE_LIMIT_KEY] = RateLimit(
        limits.rate_limit_rps, limits.rate_limit_burst, limits.trusted_proxies
    )
    app.middlewares.append(rate_limit_middleware(rate_limit, app[COUNTERS_KEY].rate_limited.inc))
    app[ORIGINS_KEY] = AllowedOrigins(config.http.allowed_origin)
    app[AUTH_KEY] = Authenticator(config)
    setup_access(app)  # the auth hook's metrics and client (AUTH_HOOK_URL)
    api = whip_whep.Api(config, registry, drain)
    app[whip_whep.API_KEY] = api
    whip_whep.add_routes(app, api)
    hub = app[whep_events.EVENTS_KEY] = whep_events.EventHub(registry.directory, drain)
    whep_events.add_routes(app, hub)
    control_api = app[CONTROL_KEY] = control.ControlApi(config, registry, totals)
    control.add_routes(app, control_api)
    if config.cluster.enabled:  # REDIS_URL: one node of several (gateway/cluster/)
        node = setup_cluster(app, config, registry)
        api.nodes, node.list_rooms = node, control_api.local_rooms
    setup_recordings(app, config)
    setup_webhooks(app, config, registry.directory)  # WEBHOOK_URLS
    app.router.add_get("/api/openapi.json", openapi_handler)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    if config.observability.metrics_addr is None:
        app.router.add_get("/metrics", metrics_handler(app[REGISTRY_KEY]))
    add_static_ui(app)
    return app
