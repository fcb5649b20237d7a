"""Several gateways ("nodes") sharing one room directory in Redis (REDIS_URL; issue 13).

Without REDIS_URL nothing here runs: the gateway is one node with the in-memory directory,
as ever. With it, `setup_cluster` makes this gateway a `ClusterNode` (node.py): the
NodeDirectory that the WHIP/WHEP handlers ask where a room or a session is served (here, or
307 to the node that holds it), backed by the keys and atomic scripts of store.py.
docs/cluster.md is the operator's and the designer's description.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.http.auth import AUTH_KEY
from gateway.http.drain import DRAIN_KEY
from gateway.http.whep_events import EVENTS_KEY
from gateway.metrics import REGISTRY_KEY
from gateway.placement.registry import Registry

if TYPE_CHECKING:
    from gateway.cluster.node import ClusterNode

# redis-py is imported only by a gateway with REDIS_URL (node.py, store.py): redis loads
# OpenTelemetry's SDK for its own observability, which a gateway without OTEL_* must not.
CLUSTER_KEY: web.AppKey[ClusterNode] = web.AppKey("cluster")

__all__ = ["CLUSTER_KEY", "ClusterNode", "setup_cluster"]


def __getattr__(name: str) -> Any:
    if name == "ClusterNode":
        from gateway.cluster.node import ClusterNode

        return ClusterNode
    raise AttributeError(name)


def setup_cluster(app: web.Application, config: GatewayConfig, registry: Registry) -> ClusterNode:
    """Make the app's gateway a node of the cluster: it registers at startup, leaves at
    cleanup (after its rooms were closed), and says it is draining when the drain begins.
    The WHIP/WHEP API and the control API find it at app[CLUSTER_KEY]; the authenticator
    takes its redirect grants, and the WHEP events hub asks it where a session is held.
    (Called after the app's AUTH_KEY and EVENTS_KEY are set: gateway/http/app.py.)"""
    from gateway.cluster.node import ClusterNode

    node = ClusterNode(config, registry.directory, registry.live_worker_count, app[REGISTRY_KEY])
    app[CLUSTER_KEY] = node
    app[DRAIN_KEY].on_start.append(node.start_draining)
    # A redirected POST's signed grant (NODE_TOKEN) stands for the credential it lost.
    app[AUTH_KEY].redirect_grants = node.grants
    if EVENTS_KEY in app:  # the WHEP events URL of a session held elsewhere: 307 there
        app[EVENTS_KEY].nodes = node

    async def start(_app: web.Application) -> None:
        await node.start()

    async def stop(_app: web.Application) -> None:
        await node.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return node
