"""Real processes and a real client, for tests/ and bench/ alike.

`testkit.processes` starts `python -m gateway` and hand-started `python -m sfu` workers and
looks at them from the outside (/proc, logs, readiness); `testkit.client` is the aiortc
WHIP publisher / WHEP viewer, as a library and as a CLI (`python -m testkit.client`).

Part of the repository, not of the installed distribution (pyproject's
`[tool.setuptools.packages.find]` lists the production packages only); bench/ imports it
because bench/ may not import tests/, and tests/ import it so that there is one of each.
"""
