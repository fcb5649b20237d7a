"""Every message exchanged between the gateway and its workers.

A message is a msgspec Struct; the body of every frame is a tagged union of them.
Bump PROTOCOL_VERSION whenever a field changes meaning; a worker announcing another version
is refused at registration.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

# 2: OpenSession replaced OpenPublisher/OpenSubscriber; Failure codes, session and publisher
# states are closed sets (an unknown one does not decode).
# 3: the shared-memory plane: OpenSession.home, FollowRoom, the plane counters of Heartbeat.
# 4: OpenSession.trace (W3C trace context; a worker of 3 could not decode it), SetLogLevel,
# the "first_packet" session state.
# 5: RestartIce/IceRestarted (RFC 9725 ICE restart), the "ice_not_connected" failure, the ICE
# mux counters of Heartbeat.
# 6: RoomStats.media (TrackStats: per-track bitrate, frame rate, size, loss, keyframes).
# 7: SessionState.timeline (the session's set-up marks, TIMELINE_MARKS).
# 8: Heartbeat.ice_mux_drops renamed ice_mux_counters (it also counts rebindings).
PROTOCOL_VERSION = 8

SessionKind = Literal["publisher", "subscriber"]
# A session's changes of state that its worker reports on its own.
SessionStateName = Literal["connected", "first_packet", "closed"]
# A session's set-up timeline, in order: seconds from the offer reaching its worker to the
# answer made, the client's first STUN check seen, ICE connected, the DTLS handshake's start
# and end (aiortc's connected), and the first RTP packet (sfu/session/base.py Session.mark).
TIMELINE_MARKS = (
    "answer",
    "ice.first_check",
    "ice.connected",
    "dtls.start",
    "dtls.connected",
    "first_packet",
)
PublisherState = Literal["none", "connecting", "connected"]
# Why a request was refused or failed; gateway/http/errors.py maps each to an HTTP status.
FailureCode = Literal[
    "bad_offer",  # malformed SDP or nothing we can forward -> 400
    "publisher_exists",  # -> 409
    "no_room",  # -> 404
    "unknown_session",  # -> 404
    "bad_candidate",  # -> 400
    "ice_not_connected",  # an ICE restart of a session that never connected -> 409
    "refused",  # registration refused
    "overloaded",  # -> 503
    "internal",  # -> 503 (never a 500 to the client)
]
FAILURE_CODES: frozenset[str] = frozenset(get_args(FailureCode))


class _Msg(msgspec.Struct, forbid_unknown_fields=True, tag_field="t"):
    pass


# --- registration and liveness (worker -> gateway requests) --------------------------------


class Hello(_Msg, tag="hello"):
    """First request a worker sends; the gateway answers Welcome or Failure."""

    worker_id: str
    pid: int
    protocol: int
    version: str
    hostname: str
    token: str = ""
    local: bool = False


class Welcome(_Msg, tag="welcome"):
    heartbeat_interval: float


class Counters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The traffic counters a worker reports, for itself (Heartbeat) and per room (RoomStats);
    the gateway turns them into monotonic metrics. Keyword-only, so they never shift the
    positional fields of the messages that carry them."""

    packets_in: int = 0  # RTP packets received from publishers
    bytes_in: int = 0
    packets_out: int = 0  # RTP packets forwarded to viewers
    bytes_out: int = 0  # payload bytes forwarded
    dropped_packets: int = 0  # malformed or unroutable


class TrackStats(msgspec.Struct, forbid_unknown_fields=True, array_like=True):
    """One track of a room's current publisher, as its home measured it (sfu/roomstats.py).

    Rates are over the last RATE_WINDOW (at least one second) of heartbeats; counters run
    since the track began. 0 means unknown for width, height and the keyframe fields."""

    kind: str
    codec: str  # as sfu.sdp.describe_codec says it, e.g. "H264 (high, 64001f, ...)"
    bitrate_bps: float  # received RTP bytes (headers, RTX included) * 8 per second
    frame_rate: float  # video: marker bits (last packet of a frame) per second
    width: int  # of the latest keyframe, where the codec's header says it (VP8, VP9, H264)
    height: int
    packets_received: int  # media packets of the source's SSRC (RTX not counted)
    packets_lost: int  # sequence gaps on the ingest leg, before any retransmission
    loss_ratio: float  # lost / expected over the rate window
    keyframes: int
    keyframe_interval_s: float  # between the last two keyframes
    keyframe_age_s: float  # since the latest keyframe; -1: none yet


class RoomStats(Counters, array_like=True):
    """One room in a heartbeat. Counters run since the room was created on this worker.

    A room that closed since the previous heartbeat is reported once more with closed=True
    and its final counters, so the gateway's per-room totals miss nothing.
    """

    name: str
    publisher_state: PublisherState
    tracks: list[tuple[str, str]]  # (kind, codec name) of the current publisher
    subscribers: int
    closed: bool = False
    media: list[TrackStats] = msgspec.field(default_factory=list)  # by kind


class Heartbeat(_Msg, Counters, tag="heartbeat"):
    """Sent by a worker from its event loop; a late heartbeat means a busy or hung loop.

    Its Counters run since the worker started."""

    rooms: list[str]
    sessions: int
    forwarded_packets_per_s: float
    cpu: float  # fraction of one core used since the previous heartbeat
    rss_bytes: int = 0
    loop_lag_s: float = 0.0
    ipc_round_trip_s: float = 0.0  # of the previous heartbeat request
    room_stats: list[RoomStats] = msgspec.field(default_factory=list)
    # Sessions the worker can hold at once (its UDP port budget); 0 = no fixed limit.
    session_capacity: int = 0
    asyncio_tasks: int = 0
    # Recording (issue 6): recordings being written now; since the worker started, bytes
    # written to recording files and recordings stopped by a write error.
    recordings_active: int = 0
    recording_bytes: int = 0
    recording_write_errors: int = 0
    # The shared-memory plane (issue 12), since the worker started: packets this worker
    # read from other workers' rings, and those it lost (lapped: its loop fell a ring behind).
    plane_packets_read: int = 0
    plane_packets_lost: int = 0
    # Rooms this worker follows as an edge (their home is another worker), and followers of
    # rooms it is home of (one per room and edge worker).
    edge_rooms: int = 0
    followers: int = 0
    # The ICE mux (UDP_MUX_PORT/TCP_MUX_PORT; empty without one), since the worker started:
    # datagrams and connections it refused or dropped, by reason, and its rebindings and
    # evicted routes; and the remote addresses it routes now.
    ice_mux_counters: dict[str, int] = msgspec.field(default_factory=dict)
    ice_mux_routes: int = 0


class HeartbeatAck(_Msg, tag="heartbeat_ack"):
    pass


class Reregister(_Msg, tag="reregister"):
    """The gateway does not know this worker (it restarted or declared the worker dead)."""


# --- session control (gateway -> worker requests) ------------------------------------------


class OpenSession(_Msg, tag="open_session"):
    """Create a publisher or subscriber session from the client's offer; answered with
    SessionAnswer or Failure.

    home: for a subscriber placed on an *edge* (a local worker other than the one its room's
    publisher is on), the worker id of the room's home, whose shared-memory rings the edge
    reads (sfu/plane/); empty when the session goes to the home itself.

    trace: the gateway's trace context as W3C headers (traceparent, tracestate), for the
    worker's spans to join the HTTP request's trace (common/tracing.py); empty when tracing
    is off. Carried as plain strings: ipc/ knows nothing of OpenTelemetry.
    """

    kind: SessionKind
    room: str
    session_id: str
    offer: str
    home: str = ""
    trace: dict[str, str] = msgspec.field(default_factory=dict)


class FollowRoom(_Msg, tag="follow_room"):
    """The room's publisher is now on worker `home` (a new home after the old one died, or
    a republish elsewhere): an edge with viewers of the room reads its rings from there.
    Answered Done (also by a worker without the room: nothing to follow)."""

    room: str
    home: str


class SessionAnswer(_Msg, tag="session_answer"):
    answer: str
    ice_ufrag: str
    ice_pwd: str


class AddCandidates(_Msg, tag="add_candidates"):
    """Trickled remote candidates (RFC 8840 fragment already parsed by the gateway)."""

    session_id: str
    candidates: list[str]  # the value of each a=candidate line, without "a="
    mid: str | None = None
    end_of_candidates: bool = False


class RestartIce(_Msg, tag="restart_ice"):
    """An ICE restart (RFC 9725 §4.3): the client's new credentials and candidates (parsed
    from its PATCH by the gateway); answered IceRestarted, or Failure (the session carries on
    with its old ICE session then)."""

    session_id: str
    ice_ufrag: str
    ice_pwd: str
    candidates: list[str]  # the value of each a=candidate line, without "a="
    mid: str | None = None
    end_of_candidates: bool = False


class IceRestarted(_Msg, tag="ice_restarted"):
    """The server's new ICE credentials and candidates: the sdpfrag body of the 200."""

    fragment: str


class CloseSession(_Msg, tag="close_session"):
    session_id: str


class CloseRoom(_Msg, tag="close_room"):
    room: str


class SetLogLevel(_Msg, tag="set_log_level"):
    """A reload changed LOG_LEVEL: the worker logs at `level` from now on (answered Done)."""

    level: str


class Done(_Msg, tag="done"):
    pass


class Failure(_Msg, tag="failure"):
    """A refused or failed request."""

    code: FailureCode
    message: str


# --- notifications (worker -> gateway) ------------------------------------------------------


class SessionState(_Msg, tag="session_state"):
    """A session changed state on its own: connected (ICE and DTLS up), first_packet (the
    first RTP packet forwarded to or received from it, once), closed (failed, reaped,
    deleted). `timeline`: the marks of TIMELINE_MARKS seen so far (seconds since the offer
    reached the worker), with connected and first_packet."""

    session_id: str
    room: str
    state: SessionStateName
    reason: str = ""
    timeline: dict[str, float] = msgspec.field(default_factory=dict)


Message = (
    Hello
    | Welcome
    | Heartbeat
    | HeartbeatAck
    | Reregister
    | OpenSession
    | SessionAnswer
    | AddCandidates
    | RestartIce
    | IceRestarted
    | CloseSession
    | CloseRoom
    | FollowRoom
    | SetLogLevel
    | Done
    | Failure
    | SessionState
)


class Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """What travels in one ZeroMQ message part.

    kind: 0 request, 1 response, 2 notification. `id` pairs a response with its request
    (0 for notifications). `v` is the sender's protocol version.
    """

    v: int
    kind: int
    id: int
    body: Message


REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2
