"""Settings that are both a command-line flag and an environment variable.

Shared by sfu-gateway and sfu-worker. Precedence: flag, then environment, then default. An
empty environment variable counts as unset (as in live-webrtc-go). An invalid value ends the
program with exit code 2 and one line naming the setting.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn


@dataclass(frozen=True)
class Setting:
    name: str  # attribute name on the result
    env: str  # environment variable
    default: str  # as it would be written in the environment
    help: str
    parse: Callable[[str], Any] = str
    secret: bool = False  # never echo its value (tokens, keys)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def load(
    prog: str,
    description: str,
    settings: Sequence[Setting],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    env = os.environ if environ is None else environ
    parser = _OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every setting can also be given by the environment variable named in [].",
    )
    for s in settings:
        shown = s.default if s.default != "" else '""'
        parser.add_argument(
            s.flag,
            dest=s.name,
            default=None,
            metavar=s.env,
            help=f"{s.help} [{s.env}] (default: {shown})",
        )
    args = parser.parse_args(argv)
    result = argparse.Namespace()
    for s in settings:
        raw = getattr(args, s.name)
        source = s.flag
        if raw is None:
            raw = env.get(s.env) or None
            source = s.env
        if raw is None:
            raw, source = s.default, f"{s.env} (default)"
        try:
            value = s.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "(value hidden)" if s.secret else repr(raw)
            parser.exit(2, f"{prog}: invalid value {shown} for {source}: {exc}\n")
        setattr(result, s.name, value)
    return result


# --- parsers shared by both programs ------------------------------------------------------


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def parse_int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def parse_positive_float(raw: str) -> float:
    value = float(raw.strip())
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def parse_csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_port_range(raw: str) -> tuple[int, int] | None:
    """'40000-40999' -> (40000, 40999); '' -> None (ports chosen by the OS)."""
    text = raw.strip()
    if not text:
        return None
    low_text, sep, high_text = text.partition("-")
    if not sep:
        raise ValueError("expected LOW-HIGH, e.g. 40000-40999")
    low, high = int(low_text), int(high_text)
    if not 1024 <= low <= high <= 65535:
        raise ValueError("ports must satisfy 1024 <= LOW <= HIGH <= 65535")
    return (low, high)


def parse_ip_list(raw: str) -> list[str]:
    addresses = parse_csv(raw)
    for address in addresses:
        ipaddress.ip_address(address)
    return addresses


def parse_optional_ip(raw: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    return str(ipaddress.ip_address(text))


def die(prog: str, message: str) -> NoReturn:
    """Exit 2 with one line: for settings that are only invalid in combination."""
    sys.stderr.write(f"{prog}: {message}\n")
    raise SystemExit(2)
