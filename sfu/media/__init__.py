"""The media core: the per-packet path of a track, as small stages (no aiortc, no asyncio
on the packet path, no I/O but the viewers' send functions).

One `TrackForwarder` (track.py) per room and media kind composes them:

* packet.py: `RtpView`, the one parse of an inbound RTP header (ValueError if malformed);
  every later stage reads the view's fields, and extension lookups walk only the
  extension block the parse located.
* source.py: the track's source (`PacketSource`), SSRC switching with the silence rule,
  RTX unwrapping within the replay window, source epochs.
* cache.py: the last 1024 packets and the answers to viewers' NACKs.
* keyframes.py: keyframe detection per codec, and keyframe requests to the source (at
  most one per 0.5 s, never lost).
* instant_start.py: the latest group of pictures (byte-capped) and the paced catch-up of
  joining viewers; the keyframe gate of a new epoch.
* fanout.py: `Output` (one viewer: header template, rebase, forward, retransmit), the
  `Fanout` to the live viewers with their audio-level slots, and `ViewerStage`.
* transport_cc.py: transport-cc arrival recording and feedback for publishers.
* stats.py: `ForwardingStats`; clock.py: injected clocks and timers (`ManualClock` for
  tests).

Two typed seams (`typing.Protocol`) are where new parts plug in:

* `PacketSource` (source.py) is what feeds a track: `codec`, `audio_level_id` and
  `request_keyframe()`. A source calls `track.connect(source)`, then
  `track.receive(RtpView(data), rtx)` per packet, and `track.disconnect(source)`.
  The publisher's ingress (`set_source` wraps its values in a `SourceInfo`), and a reader
  of another worker's shared-memory ring (sfu/plane/edge.py `RingSource`): it connects
  with itself as the track's `History` too (NACK answers and joiners' backlog come from
  the ring), drains the ring on the loop and calls `track.deliver` per record (the home
  already switched, unwrapped and keyed it); its `request_keyframe` sends a request to the
  home. A relay from another node would be the same with a socket for the ring.
* `Mirror` (track.py) is a copy of a track's forwarded packets for other workers: the
  home's `RingMirror` (sfu/plane/home.py), written once per packet before the fan-out.
* `ViewerStage` (fanout.py) is what the fan-out feeds per viewer: `forward`, `retransmit`,
  `source_seq` and `level_slot`. Today: `Output`. Simulcast layer selection would be a
  stage attached (once per layer) to each layer's track, in front of the viewer's one
  Output: it passes on the packets of the layer it has selected, switches layers at a
  keyframe of the target layer (`keyframes.keyframe_test`) and gives each (layer, epoch)
  its own epoch number, so the Output re-bases at the switch and the viewer's stream stays
  contiguous; NACKs are mapped back to the layer whose packet it was.
"""

from sfu.codecs import CodecKey
from sfu.media.fanout import Fanout, Output, ViewerStage, header_template
from sfu.media.instant_start import InstantStart
from sfu.media.packet import RtpView
from sfu.media.source import PacketSource, SourceInfo
from sfu.media.stats import ForwardingStats
from sfu.media.track import PacketTap, TrackForwarder

__all__ = [
    "CodecKey",
    "Fanout",
    "ForwardingStats",
    "InstantStart",
    "Output",
    "PacketSource",
    "PacketTap",
    "RtpView",
    "SourceInfo",
    "TrackForwarder",
    "ViewerStage",
    "header_template",
]
