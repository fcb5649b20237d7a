"""Live reload (SIGHUP): read the configuration again and apply what can change live.

The configuration is read exactly as at start (gateway/config.py `load_all`: flags, the
process environment, CONFIG_FILE, defaults; secret `<ENV>_FILE` files are read again too).
The process environment and the flags cannot change after start, so a reload changes what
CONFIG_FILE and the secret files say, and only for settings that neither a flag nor a
non-empty environment variable gives.

* Invalid (a value, a combination, an unreadable file): the running configuration stays,
  and one ERROR line says why.
* Valid: the LIVE settings below take effect for every request from now on, without
  touching a session; every other setting whose value differs from the one the gateway
  started with is named in one WARNING line ("needs a restart") and is not applied, so
  the running configuration never mixes old and new restart-only values.

`notify.reloading()` starts a reload and `notify.ready()` ends it (systemd Type=notify-reload).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common import logformat, notify
from common.settings import Setting
from gateway import settings as s
from gateway.config import (
    ConfigError,
    GatewayConfig,
    LoadedConfig,
    parse_environment_file,
    try_load_all,
)

log = logging.getLogger(__name__)

# What a reload applies. Everything else needs a restart.
LIVE_SETTINGS: tuple[Setting[Any], ...] = (
    # credentials
    s.AUTH_TOKEN,
    s.ROOM_TOKENS,
    s.JWT_SECRET,
    s.JWT_AUDIENCE,
    s.JWT_ALGORITHMS,
    s.ADMIN_TOKEN,
    # rate limit and caps
    s.RATE_LIMIT_RPS,
    s.RATE_LIMIT_BURST,
    s.TRUSTED_PROXIES,
    s.MAX_SESSIONS_PER_IP,
    s.MAX_SESSIONS_PER_WORKER,
    s.MAX_PENDING_SESSIONS_PER_IP,
    s.MAX_PENDING_SESSIONS,
    s.MAX_SUBS_PER_ROOM,
    # CORS
    s.ALLOWED_ORIGIN,
    # what clients are told about ICE servers (read per request)
    s.STUN_URLS,
    s.TURN_URLS,
    s.TURN_USERNAME,
    s.TURN_PASSWORD,
    s.TURN_SECRET,
    s.TURN_TTL,
    # the gateway's own log level (its workers keep theirs until a restart)
    s.LOG_LEVEL,
    s.DRAIN_TIMEOUT,
)
_LIVE_NAMES = frozenset(setting.name for setting in LIVE_SETTINGS)


def live_part(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """`running` with the LIVE settings of `new`; keep it in step with LIVE_SETTINGS."""
    return dataclasses.replace(
        running,
        auth=new.auth,
        limits=new.limits,
        ice=new.ice,
        http=dataclasses.replace(running.http, allowed_origin=new.http.allowed_origin),
        observability=dataclasses.replace(
            running.observability, log_level=new.observability.log_level
        ),
        ops=dataclasses.replace(running.ops, drain_timeout=new.ops.drain_timeout),
    )


@dataclass
class ReloadState:
    """What a reload reads from and what it swaps.

    `apply` makes every request read the new configuration (gateway/http/app.py
    `apply_live_config`, through the Gateway); it must not await, so that no request sees
    half of a reload.
    """

    argv: Sequence[str] | None
    started: LoadedConfig  # restart-only settings are compared with these
    current: LoadedConfig  # what runs now
    apply: Callable[[GatewayConfig], None]
    environ: Mapping[str, str] | None = None  # None: os.environ


def _overridden(state: ReloadState) -> list[str]:
    """Settings that CONFIG_FILE gives but a non-empty environment variable overrides."""
    path = state.current.config.ops.config_file
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as file:
            from_file = parse_environment_file(file.read())
    except (OSError, UnicodeDecodeError, ValueError):
        return []  # try_load_all has just read it; a race with an editor is not worth a line
    env = os.environ if state.environ is None else state.environ
    return [
        setting.env
        for setting in s.SETTINGS
        if setting.env in from_file
        and env.get(setting.env) not in (None, "", from_file[setting.env])
    ]


async def reload(state: ReloadState) -> bool:
    """One reload (SIGHUP); True when the new configuration was taken."""
    notify.reloading()
    try:
        return _reload(state)
    except Exception:  # a bug must not leave an unretrieved task exception, nor end the gateway
        log.exception("reload failed; the running configuration stays")
        return False
    finally:
        notify.ready()


def _reload(state: ReloadState) -> bool:
    try:
        loaded = try_load_all(state.argv, state.environ)
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        return False
    old, new = state.current.values, loaded.values
    changed = [x.env for x in s.SETTINGS if x.name in _LIVE_NAMES and old[x] != new[x]]
    restart = [
        x.env for x in s.SETTINGS if x.name not in _LIVE_NAMES and state.started.values[x] != new[x]
    ]
    config = live_part(state.current.config, loaded.config)
    state.apply(config)
    logformat.set_level(config.observability.log_level)
    state.current = LoadedConfig(config, new)
    log.info(
        "configuration reloaded; %s",
        f"applied: {', '.join(changed)}" if changed else "no live setting changed",
    )
    if restart:
        log.warning(
            "reload: not applied, these changed settings need a restart: %s", ", ".join(restart)
        )
    overridden = _overridden(state)
    if overridden:
        log.warning(
            "reload: CONFIG_FILE's %s ignored: the environment sets them (it takes precedence)",
            ", ".join(overridden),
        )
    return True
