"""A room on one worker (mediasoup's Router): at most one publisher, any number of viewers,
and one TrackForwarder per media kind that outlives publishers."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.forward import ForwardingStats, InstantStart, TrackForwarder


class Room:
    def __init__(
        self, name: str, stats: ForwardingStats, instant_start: InstantStart | None = None
    ) -> None:
        self.name = name
        self.stats = stats
        self.instant_start = instant_start
        self.forwarders: dict[str, TrackForwarder] = {}
        # The codecs of the latest publisher; viewers negotiate these, and a later publisher
        # is steered to them so that connected viewers keep playing across a republish.
        self.codecs: dict[str, RTCRtpCodecParameters] = {}
        self.publisher_id: str | None = None
        self.subscriber_ids: set[str] = set()

    def forwarder(self, kind: str) -> TrackForwarder:
        forwarder = self.forwarders.get(kind)
        if forwarder is None:
            forwarder = self.forwarders[kind] = TrackForwarder(kind, self.stats, self.instant_start)
        return forwarder

    def publisher_codecs_changed(self, codecs: dict[str, RTCRtpCodecParameters]) -> None:
        self.codecs.update(codecs)

    @property
    def empty(self) -> bool:
        return self.publisher_id is None and not self.subscriber_ids

    def close(self) -> None:
        for forwarder in self.forwarders.values():
            forwarder.close()
        self.forwarders.clear()
