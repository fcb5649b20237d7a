"""This node in a cluster of gateways sharing a room directory in Redis (REDIS_URL).

`ClusterNode` is the NodeDirectory (gateway/placement/directory.py) of a clustered gateway:

* **Its record.** A heartbeat task writes the node's record (URL, load, draining, its rooms)
  every `heartbeat_interval` (a quarter of the shorter TTL), refreshes the rooms it is home
  of, deletes those that ended (compare-and-delete, after a grace for a POST on its way),
  and reads every node's record into a cache that placement and /api/rooms read.
* **Routing a POST** (`route_endpoint`), the one redirect decision:
  - a room this node holds locally is served here without asking Redis;
  - WHIP, a room elsewhere: CLAIM (one round trip) with the least loaded node with
    capacity as the candidate (this node on a tie): the live home if the room has one, else
    the candidate, reserved. Here → serve; elsewhere → 307 there.
  - WHEP: the room's live home → 307 there; none → served here, which answers 404.
  - A request that carries the hop marker (`?node=ID`, added to every Location this node
    redirects to) is never redirected again: WHIP claims the room for this node, WHEP is
    served here if this node is the home; otherwise 503 `room_moved` + Retry-After (the
    directory changed while the client followed the redirect: it retries the first URL).
    So a request takes at most one redirect, and a node never redirects to itself.
  - With NODE_TOKEN, the Location of a POST's 307 also carries a signed grant (`&grant=`,
    grant.py) for the room, the right this node checked and the target node: clients drop
    `Authorization` on a redirect to another host, and the target takes the grant instead.
* **Sessions** have ids `<node id>.<192 random bits>`: any node tells the holder from the
  id alone (no per-session state in Redis), and a PATCH/DELETE/GET on a session held
  elsewhere is answered 307 to the holder (unless it carries the hop marker).
* **Redis unreachable**: rooms and sessions held here go on (nothing on their path asks
  Redis); what needs Redis answers 503 `cluster_unavailable` + Retry-After at once while the
  last attempt failed; /readyz answers 503 naming Redis; the heartbeat retries every
  half-second and the node is back as soon as one succeeds (the client reconnects).
* **Stop**: a draining node says so in its record at once (no new room is placed on it) and,
  when it stops, deletes its rooms and its record.

Where the relay (cascading, issue 13's second part) plugs in: `route_endpoint` for WHEP is
the one place that picks the node a viewer goes to: beyond the home's viewer capacity it
would pick a relaying node instead of the home, and the node records carry what that choice
needs (load, capacity, draining). NODE_TOKEN (`token_matches`) is the credential a relay's
WHEP request presents to the home.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis

from gateway.cluster.grant import GRANT_PARAMETER, RESULTS, RedirectGrants
from gateway.cluster.store import UNREACHABLE, RoomStore, connect
from gateway.config import ClusterConfig, GatewayConfig
from gateway.http.auth import Right
from gateway.http.errors import HttpError, unavailable
from gateway.placement.directory import SessionDirectory
from ipc.messages import SessionKind

log = logging.getLogger(__name__)

HOP_PARAMETER = "node"  # ?node=<id>: the hop marker of a redirected request
SESSION_SEPARATOR = "."  # <node id>.<random>: no node id has a dot
# While Redis is unreachable, the heartbeat tries again this often (or at its interval).
RETRY_INTERVAL_S = 0.5
# Version of the node record's layout, for the nodes of a rolling upgrade.
RECORD_VERSION = 1
# A node lists at most this many of its rooms in its record (/api/rooms on other nodes).
MAX_LISTED_ROOMS = 10_000
# A stopping node waits this long to give up its rooms and record (else they expire).
STOP_TIMEOUT_S = 2.0

RoomLister = Callable[[], list[dict[str, Any]]]


def _no_rooms() -> list[dict[str, Any]]:
    return []


@dataclass
class NodeLoad:
    """What placement compares; from a node's record, or this node's own figures."""

    node_id: str
    url: str
    rooms: int = 0
    sessions: int = 0
    workers: int = 0
    capacity: int = 0  # sessions it can take in all; 0 = no fixed limit
    draining: bool = False

    @property
    def has_capacity(self) -> bool:
        if self.draining or self.workers == 0:
            return False
        return self.capacity == 0 or self.sessions < self.capacity

    def score(self, prefer: str) -> tuple[float, float, bool, str]:
        """Lower is better: sessions, then rooms, per worker; `prefer` (this node) on a tie."""
        workers = max(self.workers, 1)
        return (self.sessions / workers, self.rooms / workers, self.node_id != prefer, self.node_id)

    @classmethod
    def of(cls, record: dict[str, Any]) -> NodeLoad:
        def number(name: str) -> int:
            value = record.get(name, 0)
            return int(value) if isinstance(value, int | float) else 0

        return cls(
            node_id=str(record["id"]),
            url=str(record.get("url", "")),
            rooms=number("rooms"),
            sessions=number("sessions"),
            workers=number("workers"),
            capacity=number("capacity"),
            draining=bool(record.get("draining", False)),
        )


class ClusterMetrics:
    """live_node_info{node,url}, live_redis_up, live_redirects_total{kind}, live_cluster_*,
    live_redirect_grants_total{result}."""

    def __init__(self, registry: CollectorRegistry, config: ClusterConfig) -> None:
        info = Gauge(
            "live_node_info",
            "This gateway's node in the cluster (REDIS_URL): always 1, labelled",
            ["node", "url"],
            registry=registry,
        )
        info.labels(config.node_id, config.node_url).set(1)
        self.redis_up = Gauge(
            "live_redis_up",
            "1 while the last exchange with the cluster's Redis succeeded, else 0",
            registry=registry,
        )
        self.redirects = Counter(
            "live_redirects",
            "307 redirects to another node, by kind: whip, whep (POSTs), session (PATCH, "
            "DELETE, GET of a session held elsewhere)",
            ["kind"],
            registry=registry,
        )
        for kind in ("whip", "whep", "session"):
            self.redirects.labels(kind)
        self.nodes = Gauge(
            "live_cluster_nodes",
            "Nodes in the cluster's directory (this one included)",
            registry=registry,
        )
        self.conflicts = Counter(
            "live_cluster_room_conflicts",
            "Rooms held here that the directory gives to another node (after a partition "
            "from Redis longer than ROOM_TTL)",
            registry=registry,
        )
        self.refused = Counter(
            "live_cluster_refused",
            "Requests refused by the cluster layer, by reason: cluster_unavailable (Redis "
            "unreachable), room_moved (the directory changed during a redirect)",
            ["reason"],
            registry=registry,
        )
        for reason in ("cluster_unavailable", "room_moved"):
            self.refused.labels(reason)
        self.grants = Counter(
            "live_redirect_grants",
            "Signed redirect grants (NODE_TOKEN) presented here, by result: accepted, or the "
            "401's code (invalid_grant, grant_expired, grant_other_node, grant_other_room, "
            "grant_other_right, grant_used)",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.grants.labels(result)

    def observe_grant(self, result: str) -> None:
        self.grants.labels(result).inc()


class ClusterNode:
    """This gateway as one node of several (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        directory: SessionDirectory,
        live_workers: Callable[[], int],
        registry: CollectorRegistry,
        redis: Redis | None = None,
    ) -> None:
        self.config = config
        self.cluster = config.cluster
        self.directory = directory
        self.live_workers = live_workers
        self.redis = (
            redis
            if redis is not None
            else connect(self.cluster.redis_url, self.cluster.redis_password)
        )
        self.store = RoomStore(self.redis)
        self.metrics = ClusterMetrics(registry, self.cluster)
        # Signed redirect grants (grant.py): only with NODE_TOKEN, the key they are signed with.
        self.grants = (
            RedirectGrants(
                self.cluster.node_token, self.cluster.node_id, self.metrics.observe_grant
            )
            if self.cluster.node_token
            else None
        )
        # What /api/rooms says of this node's rooms; the control API fills it in.
        self.list_rooms: RoomLister = _no_rooms
        self.up = False  # the last exchange with Redis succeeded
        self.registered = False  # this node's record was written at least once
        self.draining = False
        self.nodes: dict[str, NodeLoad] = {}  # live nodes' last records, this one excluded
        self.records: dict[str, dict[str, Any]] = {}
        self.records_read = 0.0  # monotonic time of the last successful heartbeat
        # Rooms this node claimed or holds -> monotonic time it last claimed or held them.
        self.owned: dict[str, float] = {}
        self._conflicts: set[str] = set()
        self._duplicate_said = False
        self._started = time.time()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.metrics.redis_up.set(0)

    # --- NodeDirectory ----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    def new_session_id(self) -> str:
        return f"{self.node_id}{SESSION_SEPARATOR}{secrets.token_urlsafe(24)}"

    def location(self, path: str) -> str:
        return self.cluster.node_url + path

    def not_ready(self) -> str | None:
        if not self.up:
            return "the cluster's Redis (REDIS_URL) is unreachable"
        return None

    async def route_endpoint(self, kind: SessionKind, room: str, target: str) -> str | None:
        hop = _hop_of(target)
        if room in self.directory.rooms:
            if kind == "publisher":
                self.owned[room] = time.monotonic()
            return None  # held here: served without Redis
        self._require_redis()
        home: str | None
        try:
            if kind == "publisher":
                candidate = self.node_id if hop is not None else self._least_loaded()
                home = await self.store.claim(room, candidate, self.cluster.room_ttl)
            else:
                home = await self.store.home(room)
        except UNREACHABLE as exc:
            raise self._redis_failed(exc) from None
        if home is None or home == self.node_id:
            if home is not None:
                self.owned[room] = time.monotonic()
            return None  # here (a WHEP of a room without a home answers 404 here)
        url = await self._url_of(home) if hop is None else None
        if url is None:
            # Redirected here, and the directory has changed since: never a second redirect.
            # (Or the home left between the two reads: the client sends the POST again.)
            self.metrics.refused.labels("room_moved").inc()
            raise unavailable(
                "room_moved", f"room {room!r} moved to another node; send the request again"
            )
        if kind == "publisher" and home in self.nodes:
            # Until its next record, count the room there: a burst spreads over the nodes.
            self.nodes[home].rooms += 1
            self.nodes[home].sessions += 1
        self.metrics.redirects.labels("whip" if kind == "publisher" else "whep").inc()
        location = _redirect_url(url, _without_grant(target), home)
        if self.grants is not None:
            # This node checked the credential (auth ran before routing); the client drops it
            # on the way to another host: the grant stands for it there.
            right: Right = "publish" if kind == "publisher" else "play"
            location += f"&{GRANT_PARAMETER}={self.grants.sign(room, right, home)}"
        return location

    async def route_session(self, session_id: str, target: str) -> str | None:
        holder, separator, _ = session_id.partition(SESSION_SEPARATOR)
        if not separator or holder == self.node_id or _hop_of(target) is not None:
            return None
        url = await self._url_of(holder)
        if url is None:
            return None  # no such node (any more): its sessions are gone too
        self.metrics.redirects.labels("session").inc()
        return _redirect_url(url, target, holder)

    # --- NODE_TOKEN --------------------------------------------------------------------------

    def token_matches(self, presented: str) -> bool:
        """A node-to-node request's credential (the relay's WHEP requests, next)."""
        token = self.cluster.node_token
        return bool(token) and hmac.compare_digest(presented.encode(), token.encode())

    # --- placement ---------------------------------------------------------------------------

    def own_load(self) -> NodeLoad:
        directory = self.directory
        capacity = 0
        unlimited = False
        per_worker = self.config.limits.max_sessions_per_worker
        for worker in directory.workers.values():
            if not worker.responsive:
                continue
            caps = [c for c in (worker.session_capacity, per_worker) if c]
            if not caps:
                unlimited = True
            else:
                capacity += min(caps)
        return NodeLoad(
            node_id=self.node_id,
            url=self.cluster.node_url,
            rooms=len(directory.rooms),
            sessions=len(directory.sessions),
            workers=self.live_workers(),
            capacity=0 if unlimited else max(capacity, 1),
            draining=self.draining,
        )

    def _least_loaded(self) -> str:
        """The node a new room goes to: the least loaded with capacity, this one on a tie;
        this one when none has capacity (it then answers 503 as a single node would)."""
        own = self.own_load()
        candidates = [n for n in (own, *self.nodes.values()) if n.has_capacity]
        if not candidates:
            return self.node_id
        return min(candidates, key=lambda n: n.score(self.node_id)).node_id

    async def _url_of(self, node_id: str) -> str | None:
        known = self.nodes.get(node_id)
        if known is not None and known.url:
            return known.url
        try:
            record = await self.store.node(node_id)
        except UNREACHABLE as exc:
            raise self._redis_failed(exc) from None
        if record is None:
            return None
        load = NodeLoad.of(record)
        self.nodes[node_id] = load
        return load.url or None

    def _require_redis(self) -> None:
        """Fail at once while Redis is known to be unreachable (the heartbeat probes it)."""
        if not self.up:
            raise self._redis_failed(None)

    def _redis_failed(self, exc: BaseException | None) -> HttpError:
        if exc is not None:
            self._set_up(False, exc)
        self.metrics.refused.labels("cluster_unavailable").inc()
        return unavailable(
            "cluster_unavailable",
            "the cluster's room directory (Redis) is unreachable; rooms of other nodes and "
            "new rooms cannot be placed now",
        )

    def _set_up(self, up: bool, exc: BaseException | None = None) -> None:
        if up != self.up:
            if up:
                log.info("cluster: Redis reachable again; node %s registered", self.node_id)
            else:
                log.warning("cluster: Redis unreachable (%s): new rooms refused", _reason(exc))
        self.up = up
        self.metrics.redis_up.set(1 if up else 0)
        if not up:
            self._wake.set()  # the heartbeat tries again soon

    # --- the record and the heartbeat ---------------------------------------------------------

    def record(self) -> dict[str, Any]:
        load = self.own_load()
        workers = [w for w in self.directory.workers.values() if w.responsive]
        rooms = self.list_rooms()[:MAX_LISTED_ROOMS]
        return {
            "version": RECORD_VERSION,
            "id": self.node_id,
            "url": self.cluster.node_url,
            "rooms": load.rooms,
            "sessions": load.sessions,
            "workers": load.workers,
            "capacity": load.capacity,
            "cpu": round(sum(w.cpu for w in workers) / len(workers), 3) if workers else 0.0,
            "draining": self.draining,
            "started": round(self._started, 3),
            "updated": round(time.time(), 3),
            "roomList": rooms,
        }

    async def heartbeat(self) -> None:
        """One exchange with Redis (see RoomStore.heartbeat); raises when it is unreachable."""
        now = time.monotonic()
        grace = 2 * self.cluster.heartbeat_interval
        for room in self.directory.rooms:
            self.owned[room] = now
        held = sorted(r for r, seen in self.owned.items() if seen == now)
        ended = sorted(
            r
            for r, seen in self.owned.items()
            if r not in self.directory.rooms and now - seen > grace
        )
        record = self.record()
        replaced, owners, records = await self.store.heartbeat(
            self.node_id,
            record,
            self.cluster.node_ttl,
            held,
            self.cluster.room_ttl,
            ended,
        )
        self._check_unique(replaced)
        for room in ended:
            if self.owned.get(room) is not None and room not in self.directory.rooms:
                del self.owned[room]
        for room, other in zip(held, owners, strict=True):
            if other and room not in self._conflicts:
                self._conflicts.add(room)
                self.metrics.conflicts.inc()
                log.warning(
                    "cluster: room %s is held here but the directory gives it to node %s "
                    "(a partition from Redis); new sessions of it go there",
                    room,
                    other,
                )
            elif not other:
                self._conflicts.discard(room)
        self._conflicts &= set(held)
        self.nodes = {str(r["id"]): NodeLoad.of(r) for r in records if r.get("id") != self.node_id}
        self.records = {str(r["id"]): r for r in records}
        self.records[self.node_id] = record
        self.records_read = time.monotonic()
        self.metrics.nodes.set(len(self.nodes) + 1)
        self.registered = True
        self._set_up(True)

    def _check_unique(self, replaced: dict[str, Any] | None) -> None:
        """Another process writing records under this NODE_ID (two nodes with one id would
        take each other's rooms and sessions) is said once, loudly. A record of this node's
        previous run (same URL) is not: it is replaced at the first heartbeat."""
        if replaced is None or self._duplicate_said:
            return
        started, url = replaced.get("started"), replaced.get("url")
        ours = round(self._started, 3)
        if url != self.cluster.node_url or (self.registered and started != ours):
            self._duplicate_said = True
            log.error(
                "cluster: another node also uses NODE_ID %s (its NODE_URL: %s); give each "
                "node its own NODE_ID",
                self.node_id,
                url,
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except UNREACHABLE as exc:
                self._set_up(False, exc)
            except Exception:
                log.exception("cluster: heartbeat failed")
                self._set_up(False)
            interval = self.cluster.heartbeat_interval
            if not self.up:
                interval = min(interval, RETRY_INTERVAL_S)
                if time.monotonic() - self.records_read > self.cluster.node_ttl:
                    # What the other nodes said is older than their TTL: forget it.
                    self.nodes, self.records = {}, {}
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    # --- lifecycle (aiohttp on_startup / on_cleanup, Drain.on_start) -------------------------

    async def start(self) -> None:
        log.info(
            "cluster: node %s at %s, directory in Redis %s",
            self.node_id,
            self.cluster.node_url,
            redacted_url(self.cluster.redis_url),
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    def start_draining(self) -> None:
        """The drain began: no new room is placed here from now on (the record says so at
        the next heartbeat, which happens now)."""
        self.draining = True
        self._wake.set()

    async def stop(self) -> None:
        """Give up this node's rooms and its record (the gateway is stopping; its rooms were
        closed), then close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rooms = sorted(set(self.owned) | set(self.directory.rooms))
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                released = await self.store.release(self.node_id, rooms)
                await self.store.deregister(self.node_id)
            log.info(
                "cluster: node %s left the directory (%d rooms released)", self.node_id, released
            )
        except (TimeoutError, *UNREACHABLE) as exc:
            log.warning(
                "cluster: could not leave the directory (%s): its record and rooms expire "
                "within NODE_TTL/ROOM_TTL",
                _reason(exc),
            )
        with contextlib.suppress(*UNREACHABLE):
            await self.redis.aclose()

    # --- listings ---------------------------------------------------------------------------

    def remote_rooms(self) -> list[dict[str, Any]]:
        """The rooms of the other nodes, as of their last records, each with its node."""
        rooms: list[dict[str, Any]] = []
        for node_id, record in sorted(self.records.items()):
            if node_id == self.node_id:
                continue
            listed = record.get("roomList")
            for room in listed if isinstance(listed, list) else []:
                if isinstance(room, dict) and isinstance(room.get("name"), str):
                    rooms.append({**room, "node": node_id})
        return rooms

    def node_list(self) -> list[dict[str, Any]]:
        """Every live node's record (without its room list), this one first-hand."""
        now = time.time()
        records = dict(self.records)
        records[self.node_id] = self.record()
        result = []
        for node_id, record in sorted(records.items()):
            entry = {k: v for k, v in record.items() if k != "roomList"}
            listed = record.get("roomList")
            entry["roomNames"] = sorted(
                str(r["name"])
                for r in (listed if isinstance(listed, list) else [])
                if isinstance(r, dict) and "name" in r
            )
            entry["self"] = node_id == self.node_id
            updated = record.get("updated")
            if isinstance(updated, int | float):
                entry["lastHeartbeatSecondsAgo"] = round(max(0.0, now - updated), 3)
            result.append(entry)
        return result


def _hop_of(target: str) -> str | None:
    """The hop marker's node id in a request's path and query, or None."""
    query = urlsplit(target).query
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == HOP_PARAMETER:
            return value
    return None


def _without_grant(target: str) -> str:
    """The request's path and query without a grant it carried (a redirect gets its own)."""
    path, _, query = target.partition("?")
    kept = [p for p in query.split("&") if p and p.partition("=")[0] != GRANT_PARAMETER]
    return f"{path}?{'&'.join(kept)}" if kept else path


def _redirect_url(base: str, target: str, node_id: str) -> str:
    """`base` + the request's path and query, with the hop marker for `node_id`."""
    separator = "&" if urlsplit(target).query else "?"
    return f"{base}{target}{separator}{HOP_PARAMETER}={node_id}"


def redacted_url(url: str) -> str:
    """REDIS_URL without its credentials, for logs."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url.split("?", 1)[0]
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://***@{host}{port}{parts.path}"


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
