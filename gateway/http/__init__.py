"""The gateway's HTTP surface (aiohttp): WHIP/WHEP endpoints and session resources, the JSON
control API, recordings, and what every request passes through (errors, CORS, credentials,
rate limits, drain, access log). `app.make_app` assembles them.
"""
