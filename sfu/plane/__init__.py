"""The shared-memory media plane, worker side (issue 12).

A room lives on its *home* worker, where its publisher is. Local workers with viewers of
the room (*edges*) read its packets from shared-memory rings the home writes once per
packet, and fan them out with the same per-viewer path as the home:

* home.py: `PlaneHome`, the home side: a listener on the plane, one `RingMirror` per
  followed track (the TrackForwarder's Mirror stage: write to the ring, ring the doorbells
  of the edges once per loop turn), followers' keyframe requests.
* edge.py: `PlaneEdge`, the edge side: a link per home, following rooms, one `RingSource`
  per track (the TrackForwarder's PacketSource and History: drain the ring on a doorbell or
  a safety timer, answer NACKs and joiners' backlog from the ring).
* codecs.py: the publisher's codecs as they travel to edges.

The transport (rings, doorbells, the Unix-socket link) is ipc/shm/.
"""

from sfu.plane.edge import FollowRefused, PlaneEdge, RingSource
from sfu.plane.home import PlaneHome, RingMirror

__all__ = ["FollowRefused", "PlaneEdge", "PlaneHome", "RingMirror", "RingSource"]
