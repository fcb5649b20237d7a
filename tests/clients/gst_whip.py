#!/usr/bin/python3
"""WHIP publisher built on GStreamer's webrtcbin, for interop tests.

Run it with the SYSTEM interpreter (/usr/bin/python3), which has PyGObject and the GStreamer
typelibs from Debian packages; the project venv has neither:

    /usr/bin/python3 tests/clients/gst_whip.py --url http://127.0.0.1:8080 --room r1 \
        --codec vp9 --seconds 8

webrtcbin is a separate WebRTC stack from aiortc and libwebrtc: its own ICE agent (libnice),
its own DTLS (GStreamer's dtls elements on OpenSSL, with a certificate it generates), its own
RTP payloaders and its own SDP. The HTTP side is plain urllib so no libsoup gets loaded
(Debian's simple-whip-client aborts on a libsoup2/libsoup3 clash; this client avoids it).

--no-candidates removes every a=candidate line from the offer before POSTing it, the way OBS
(libdatachannel) sends its offers; webrtcbin still runs ICE, so the server must learn our
address from the incoming connectivity checks (peer-reflexive candidates).

Prints one JSON object on the last line of stdout (logs on stderr) and exits 0 when the
session connected and sent video, 1 when it did not, 2 when the HTTP exchange failed or
GStreamer lacks an element.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urljoin

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

log = logging.getLogger("gst_whip")

EXIT_OK, EXIT_GOALS_MISSED, EXIT_SETUP_FAILED = 0, 1, 2
VIDEO_PT, AUDIO_PT = 96, 111
MAX_REDIRECTS = 5

# Encoder settings for a live, low-latency stream: no lookahead, a keyframe every 2 s.
ENCODERS = {
    "vp8": (
        "vp8enc deadline=1 cpu-used=8 keyframe-max-dist=30 target-bitrate=600000 ! "
        "rtpvp8pay picture-id-mode=15-bit",
        "VP8",
    ),
    "vp9": (
        "vp9enc deadline=1 cpu-used=8 lag-in-frames=0 keyframe-max-dist=30 "
        "target-bitrate=600000 ! rtpvp9pay picture-id-mode=15-bit",
        "VP9",
    ),
    "h264": (
        # Not ultrafast: it turns CABAC and 8x8 transforms off, and x264 then labels any
        # stream Constrained Baseline. Level 3.1 gives OBS's profile-level-id 64001f for high.
        "x264enc tune=zerolatency speed-preset=superfast key-int-max=30 bitrate=600 ! "
        "video/x-h264,profile={profile},level=(string)3.1 ! "
        "rtph264pay config-interval=-1 aggregate-mode=zero-latency",
        "H264",
    ),
    "h265": (
        # x265enc's keyframes are CRA pictures (open GOP); repeat-headers puts VPS/SPS/PPS in
        # band before each one (rtph265pay's config-interval alone does not, and parameter
        # sets only in the offer's sprop-vps/sps/pps never reach a viewer).
        "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=600 "
        "option-string=repeat-headers=1 ! video/x-h265,profile=main ! "
        "rtph265pay config-interval=-1 aggregate-mode=zero-latency",
        "H265",
    ),
}


class WhipError(Exception):
    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def pipeline_description(codec: str, h264_profile: str, width: int, height: int) -> str:
    encoder, encoding_name = ENCODERS[codec]
    encoder = encoder.format(profile=h264_profile)
    return (
        "webrtcbin name=webrtc bundle-policy=max-bundle "
        # Moving colour bars: frames of several full-size (1400-byte, rtp*pay's default MTU)
        # packets, as real content gives; a plain ball would fit each frame in one small packet.
        "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! "
        f"video/x-raw,width={width},height={height},"
        "framerate=15/1 ! videoconvert ! queue ! "
        f"{encoder} pt={VIDEO_PT} ! "
        f"application/x-rtp,media=video,encoding-name={encoding_name},payload={VIDEO_PT} ! "
        "webrtc. "
        "audiotestsrc is-live=true wave=sine volume=0.3 ! audioconvert ! audioresample ! "
        f"queue ! opusenc ! rtpopuspay pt={AUDIO_PT} ! "
        f"application/x-rtp,media=audio,encoding-name=OPUS,payload={AUDIO_PT} ! webrtc."
    )


def strip_candidates(sdp: str) -> str:
    drop = ("a=candidate:", "a=end-of-candidates")
    return "\r\n".join(line for line in sdp.splitlines() if not line.startswith(drop)) + "\r\n"


def post_offer(endpoint: str, sdp: str, token: str | None) -> tuple[str, str]:
    """POST the offer; returns (absolute session URL, answer SDP).

    urllib does not follow a 307/308 for a POST, and WHIP load balancing uses 307 (RFC 9725
    §4.4), so redirects are followed here, keeping the method and body.
    """
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = endpoint
    for _hop in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, data=sdp.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=15) as resp:
                body = resp.read().decode()
                location = resp.headers.get("Location")
                status = resp.status
        except urllib.error.HTTPError as exc:
            redirect = exc.headers.get("Location")
            if exc.code in (307, 308) and redirect:
                url = urljoin(url, redirect)
                continue
            raise WhipError(
                f"POST {url} answered {exc.code}", exc.code, exc.read().decode()
            ) from None
        if status != 201 or not location or not body.startswith("v=0"):
            raise WhipError(f"POST {url}: {status}, Location={location!r}", status, body)
        # Relative Locations resolve against the URL that answered, not the first one.
        return urljoin(url, location), body
    raise WhipError(f"POST {endpoint}: more than {MAX_REDIRECTS} redirects")


def delete_session(location: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(location, headers=headers, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class Publisher:
    """Drives one webrtcbin through offer -> WHIP POST -> answer -> media, on a GLib loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.parse_launch(
            pipeline_description(args.codec, args.h264_profile, args.width, args.height)
        )
        self.webrtc = self.pipeline.get_by_name("webrtc")
        self.result: dict[str, Any] = {"ok": False, "codec": args.codec}
        self.location: str | None = None
        self.offer_sent = False
        self.connected_at: float | None = None
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering_state)
        self.webrtc.connect("notify::connection-state", self._on_connection_state)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.pipeline.set_state(Gst.State.PLAYING)
        for transceiver in self._transceivers():
            # WHIP offers should be sendonly (RFC 9725 §4.2); webrtcbin defaults to sendrecv.
            transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        GLib.timeout_add(int(self.args.seconds * 1000), self._finish)
        self.loop.run()
        self.result["elapsed_s"] = round(time.monotonic() - started, 2)
        return self.result

    def _transceivers(self) -> list[Any]:
        # "get-transceivers" returns a GArray PyGObject cannot index; ask one by one instead.
        found: list[Any] = []
        while (transceiver := self.webrtc.emit("get-transceiver", len(found))) is not None:
            found.append(transceiver)
        return found

    def _on_negotiation_needed(self, webrtc: Any) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer_created, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer_created(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        GLib.idle_add(self._maybe_send_offer)

    def _on_gathering_state(self, webrtc: Any, _pspec: object) -> None:
        GLib.idle_add(self._maybe_send_offer)

    def _maybe_send_offer(self) -> bool:
        """POST once gathering is complete: the server cannot trickle, and we do not PATCH."""
        if self.offer_sent:
            return False
        state = self.webrtc.get_property("ice-gathering-state")
        description = self.webrtc.get_property("local-description")
        if description is None or state != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return False
        self.offer_sent = True
        sdp = description.sdp.as_text()
        if self.args.no_candidates:
            sdp = strip_candidates(sdp)
        self.result["offer"] = sdp
        endpoint = f"{self.args.url.rstrip('/')}/api/whip/publish/{quote(self.args.room, safe='')}"
        try:
            self.location, answer = post_offer(endpoint, sdp, self.args.token)
        except (WhipError, OSError) as exc:
            self._fail(exc)
            return False
        self.result["answer"] = answer
        log.debug("offer:\n%s\nanswer:\n%s", sdp, answer)
        ok, message = GstSdp.SDPMessage.new_from_text(answer)
        if ok != GstSdp.SDPResult.OK:
            self._fail(WhipError("the answer does not parse as SDP", 201, answer))
            return False
        description = GstWebRTC.WebRTCSessionDescription.new(
            GstWebRTC.WebRTCSDPType.ANSWER, message
        )
        self.webrtc.emit("set-remote-description", description, Gst.Promise.new())
        return False

    def _on_connection_state(self, webrtc: Any, _pspec: object) -> None:
        # Signals arrive on GStreamer's threads; handle them on the main loop's thread.
        GLib.idle_add(self._connection_state_changed)

    def _connection_state_changed(self) -> bool:
        state = self.webrtc.get_property("connection-state")
        log.info("connection state %s", state.value_nick)
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and not self.connected_at:
            self.connected_at = time.monotonic()
            self.result["connected"] = True
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self._fail(WhipError("ICE/DTLS connection failed"))
        return False

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self._fail(WhipError(f"GStreamer error: {error.message} ({debug})"))

    def _fail(self, exc: Exception) -> None:
        self.result["error"] = str(exc)
        if isinstance(exc, WhipError) and exc.status is not None:
            self.result["status"] = exc.status
            self.result["body"] = exc.body[:2000]
        self._finish()

    def _finish(self) -> bool:
        if not self.loop.is_running():
            return False
        promise = Gst.Promise.new()
        self.webrtc.emit("get-stats", None, promise)
        promise.wait()
        self.result["packets_sent"] = _packets_sent(promise.get_reply())
        if self.location:
            self.result["delete_status"] = delete_session(self.location, self.args.token)
        self.pipeline.set_state(Gst.State.NULL)
        sent = self.result["packets_sent"]
        self.result["ok"] = bool(
            self.result.get("connected") and sent.get("video", 0) > 0 and "error" not in self.result
        )
        self.loop.quit()
        return False


def _packets_sent(stats: Gst.Structure) -> dict[str, int]:
    """Packets sent per kind, from webrtcbin's get-stats.

    webrtcbin 1.22 labels outbound-rtp stats with the wrong kind and codec-id, so the kind
    comes from the codec stats, which carry the right SSRC and mime-type.
    """
    kind_by_ssrc: dict[int, str] = {}
    sent_by_ssrc: dict[int, int] = {}

    def visit(_field_id: int, value: object) -> bool:
        if not isinstance(value, Gst.Structure) or not value.has_field("ssrc"):
            return True
        ssrc = int(value.get_value("ssrc"))
        if value.get_name() == "codec" and value.has_field("mime-type"):
            kind_by_ssrc[ssrc] = str(value.get_value("mime-type")).split("/", 1)[0]
        elif value.get_name() == "outbound-rtp" and value.has_field("packets-sent"):
            sent_by_ssrc[ssrc] = int(value.get_value("packets-sent"))
        return True

    stats.foreach(visit)
    sent: dict[str, int] = {}
    for ssrc, packets in sent_by_ssrc.items():
        kind = kind_by_ssrc.get(ssrc, "unknown")
        sent[kind] = sent.get(kind, 0) + packets
    return sent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--room", required=True)
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="vp8")
    parser.add_argument(
        "--h264-profile",
        choices=["constrained-baseline", "main", "high"],
        default="constrained-baseline",
        help="H264 profile x264enc encodes for --codec h264",
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--token", help="bearer token (omitted from requests when not given)")
    parser.add_argument(
        "--no-candidates", action="store_true", help="POST the offer without candidates (OBS)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s gst_whip %(levelname)s: %(message)s",
    )
    Gst.init(None)
    try:
        result = Publisher(args).run()
        code = EXIT_OK if result["ok"] else EXIT_GOALS_MISSED
        if "status" in result or (not result["ok"] and "offer" not in result):
            code = EXIT_SETUP_FAILED
    except GLib.Error as exc:  # parse_launch: an element is missing
        result, code = {"ok": False, "error": f"GStreamer: {exc.message}"}, EXIT_SETUP_FAILED
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
