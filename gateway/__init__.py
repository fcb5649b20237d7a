"""sfu-gateway: HTTP (WHIP/WHEP) front and worker supervisor. Never imports aiortc, av or sfu.

`settings` is its settings table and `config` the typed configuration built from it; `http/`
is the aiohttp surface, `placement/` the directory of workers, rooms and sessions, the worker
protocol's gateway side and the supervisor of local workers.
"""
