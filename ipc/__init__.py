"""Gateway <-> worker messaging: msgspec message types, one codec, a ZeroMQ request channel.

Depends only on the standard library, pyzmq and msgspec, so that both sides can import it
without pulling in aiohttp or aiortc.
"""
