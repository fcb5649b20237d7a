"""The aiohttp applications: the gateway's HTTP surface (`make_app`) and the METRICS_ADDR
listener (`make_metrics_app`)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.http import control, whip_whep
from gateway.http.auth import AUTH_KEY, Authenticator
from gateway.http.cors import ORIGINS_KEY, cors_middleware
from gateway.http.drain import DRAIN_KEY, Drain, drain_middleware
from gateway.http.errors import error_middleware
from gateway.http.openapi import openapi_handler
from gateway.http.ratelimit import TokenBuckets, rate_limit_middleware
from gateway.http.recordings import setup_recordings
from gateway.http.static import add_static_ui
from gateway.metrics import COUNTERS_KEY, REGISTRY_KEY, metrics_handler, setup_metrics
from gateway.placement.registry import Registry


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
    limits = config.limits
    if limits.rate_limit_rps > 0:
        buckets = TokenBuckets(limits.rate_limit_rps, limits.rate_limit_burst)
        on_refused = app[COUNTERS_KEY].rate_limited.inc
        app.middlewares.append(rate_limit_middleware(buckets, limits.trusted_proxies, on_refused))
    app[ORIGINS_KEY] = frozenset(config.http.allowed_origin)
    app[AUTH_KEY] = Authenticator(config)
    api = whip_whep.Api(config, registry, drain)
    app[whip_whep.API_KEY] = api
    whip_whep.add_routes(app, api)
    control.add_routes(app, control.ControlApi(config, registry, totals))
    setup_recordings(app, config)
    app.router.add_get("/api/openapi.json", openapi_handler)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    if config.observability.metrics_addr is None:
        app.router.add_get("/metrics", metrics_handler(app[REGISTRY_KEY]))
    add_static_ui(app)
    return app
