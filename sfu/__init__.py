"""live-sfu worker: aiortc peer connections and the RTP fanout of the rooms placed on it."""

__version__ = "0.1.0"
