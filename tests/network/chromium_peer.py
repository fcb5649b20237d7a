"""Chromium publishing or playing with the gateway's own pages, as a process that a test runs
inside a network namespace (`ip netns exec <host> python tests/network/chromium_peer.py ...`):
Playwright's driver and the browser then live in that host's network.

    chromium_peer.py publish|play --url http://10.77.0.1:8080 --room r1 --seconds 12 \
        --profile-dir /tmp/x [--min-frames 20]

It opens /web/publish.html or /web/play.html, presses Start and polls the page's
RTCPeerConnection. It prints one JSON line at the end (and exits 0 when "ok"):
* connected; frames (decoded by a player, encoded by a publisher), packets, audioPackets;
* times measured in the page (ms): connect_ms, from the RTCPeerConnection's creation (after
  the page's /api/bootstrap) to "connected" (gathering, HTTP, ICE and DTLS); gathered_ms, to
  gathering complete; answer_to_ice_ms and answer_to_connected_ms, from the answer applied to
  ICE connected and to connected (ICE + DTLS alone); first_frame_ms, from Start to the first
  frame (polled every 0.2 s);
* offered_candidates (protocol and type) and the selected ICE candidate pair (protocol,
  candidate types, tcpType, addresses): what proves that media went over ICE-TCP or UDP.
A player stops as soon as it has --min-frames (with --hold it prints a {"step": "playing"}
line then and plays on); a publisher (and a held player) runs for --seconds, or until
--stop-file exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

# Real host candidates instead of mDNS .local names (a player has no camera permission, so
# Chromium would hide its addresses; the server cannot resolve .local names).
EXTRA_ARGS = ["--disable-features=WebRtcHideLocalIpsWithMdns"]

# Installed before the page's scripts: timestamps (page clock, ms) of the peer connection's
# milestones, so that the time from the answer to "connected" (ICE + DTLS alone) is measured
# without the page's own waits (gathering, HTTP) or this script's polling.
TIMES_JS = """
(() => {
  const Original = window.RTCPeerConnection;
  const t = (window.sfuTimes = {});
  function Wrapped(...args) {
    const pc = new Original(...args);
    t.created = performance.now();
    const mark = (name, ok) => () => {
      if (ok(pc) && t[name] === undefined) t[name] = performance.now();
    };
    pc.addEventListener("icegatheringstatechange",
      mark("gathered", (p) => p.iceGatheringState === "complete"));
    pc.addEventListener("signalingstatechange",
      mark("answered", (p) => p.signalingState === "stable" && p.remoteDescription));
    pc.addEventListener("iceconnectionstatechange",
      mark("ice_connected", (p) => p.iceConnectionState === "connected"));
    pc.addEventListener("connectionstatechange",
      mark("connected", (p) => p.connectionState === "connected"));
    return pc;
  }
  Wrapped.prototype = Original.prototype;
  Object.setPrototypeOf(Wrapped, Original);
  window.RTCPeerConnection = Wrapped;
})();
"""

STATS_JS = """
async () => {
  const pc = window.sfuPc;
  if (!pc) return null;
  const report = await pc.getStats();
  const out = { frames: 0, packets: 0, audioPackets: 0, pair: null };
  let pairId = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  report.forEach((s) => {
    if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && s.kind === "video") {
      out.frames += (s.type === "inbound-rtp" ? s.framesDecoded : s.framesEncoded) || 0;
      out.packets += (s.type === "inbound-rtp" ? s.packetsReceived : s.packetsSent) || 0;
    }
    if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && s.kind === "audio") {
      out.audioPackets += (s.type === "inbound-rtp" ? s.packetsReceived : s.packetsSent) || 0;
    }
  });
  if (pairId) {
    const pair = report.get(pairId);
    const local = report.get(pair.localCandidateId) || {};
    const remote = report.get(pair.remoteCandidateId) || {};
    out.pair = {
      state: pair.state,
      local: { type: local.candidateType, protocol: local.protocol, tcpType: local.tcpType,
               address: local.address, port: local.port },
      remote: { type: remote.candidateType, protocol: remote.protocol,
                tcpType: remote.tcpType, address: remote.address, port: remote.port },
    };
  }
  return out;
}
"""


def _state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("window.sfuState") or {}
    return state


def _milestones(times: dict[str, float]) -> dict[str, float | None]:
    """The spans between the page's milestones (see the module docstring)."""

    def span(start: str, end: str) -> float | None:
        if start in times and end in times:
            return round(times[end] - times[start], 1)
        return None

    return {
        "connect_ms": span("created", "connected"),
        "gathered_ms": span("created", "gathered"),
        "answer_to_ice_ms": span("answered", "ice_connected"),
        "answer_to_connected_ms": span("answered", "connected"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    page_name = "publish.html" if args.mode == "publish" else "play.html"
    url = f"{args.url.rstrip('/')}/web/{page_name}?room={args.room}"
    result: dict[str, Any] = {"ok": False, "mode": args.mode, "connected": False}
    # getUserMedia needs a secure context: plain http:// is one only on localhost.
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(args.url))
    console: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=args.profile_dir,
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                *EXTRA_ARGS,
                f"--unsafely-treat-insecure-origin-as-secure={origin}",
            ],
        )
        try:
            page = context.new_page()
            page.add_init_script(TIMES_JS)
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.goto(url)
            started = time.monotonic()
            page.click("#start")
            deadline = started + args.seconds
            stats: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                state = _state(page)
                if state.get("error"):
                    result["error"] = state["error"]
                    break
                stats = page.evaluate(STATS_JS)
                if stats and stats["frames"] > 0 and "first_frame_ms" not in result:
                    result["first_frame_ms"] = round((time.monotonic() - started) * 1000, 1)
                if args.mode == "play" and stats and stats["frames"] >= args.min_frames:
                    if not args.hold:
                        break
                    if "held_at" not in result:  # tell the test, then play on
                        result["held_at"] = stats["frames"]
                        print(json.dumps({"step": "playing", **stats}), flush=True)
                if args.stop_file and Path(args.stop_file).exists():
                    break
                time.sleep(0.2)
            stats = page.evaluate(STATS_JS) or {}
            result["state"] = _state(page)
            if result["state"].get("connectionState") == "connected":
                result["connected"] = True  # also when the frames came before a poll saw it
            result.update(_milestones(page.evaluate("window.sfuTimes") or {}))
            local = page.evaluate("window.sfuPc && window.sfuPc.localDescription.sdp") or ""
            result["offered_candidates"] = sorted(
                {
                    " ".join(line.split()[2:3] + line.split()[7:8])
                    for line in local.splitlines()
                    if line.startswith("a=candidate:")
                }
            )
            result.update(stats)
            result["ok"] = bool(result["connected"]) and stats.get("frames", 0) >= args.min_frames
        finally:
            result["console"] = console[-20:]
            context.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("mode", choices=["publish", "play"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--min-frames", type=int, default=1)
    parser.add_argument("--profile-dir", required=True)
    parser.add_argument("--stop-file", help="end (and report) as soon as this file exists")
    parser.add_argument(
        "--hold",
        action="store_true",
        help='a player: print a {"step": "playing"} line at --min-frames and play on',
    )
    args = parser.parse_args()
    Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    try:
        result = run(args)
    except Exception as exc:  # the test reads the JSON line: report, never a bare traceback
        result = {"ok": False, "mode": args.mode, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
