"""Settings that are both a command-line flag and an environment variable.

Each program has one table of them (common/worker_settings.py for sfu-worker,
gateway/settings.py for sfu-gateway); its flags, environment variables, `--help` and
validation all come from that table, and so does the hand-off of a gateway's settings to its
local workers (`Setting.argv`, the inverse of parsing). Precedence: flag, then environment,
then default. An empty environment variable counts as unset (as in live-webrtc-go). An
invalid value ends the program with exit code 2 and one line naming the setting.

A secret setting (`secret=True`) is also read from a file: `<ENV>_FILE` names it (systemd's
LoadCredential= puts it in $CREDENTIALS_DIRECTORY, the units point `<ENV>_FILE` there), its
content is the value with the trailing newline removed, and an empty file counts as unset
(then `<ENV>` applies, if set). Both a non-empty `<ENV>` and a non-empty file, or a file that
cannot be read, exit 2 with one line that names the variable and never shows the content.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar, cast

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
FILE_SUFFIX = "_FILE"
# A secret file is a token or a key, never a document: refuse to read more than this.
MAX_SECRET_FILE_BYTES = 64 * 1024


def text(raw: str) -> str:
    """The parser of a plain text setting: the value as given."""
    return raw


@dataclass(frozen=True)
class Setting(Generic[T]):
    name: str  # attribute name of the value; the flag is --name-with-dashes
    env: str  # environment variable
    default: str  # as it would be written in the environment
    help: str
    parse: Callable[[str], T]  # raises ValueError (or TypeError) for an invalid value
    secret: bool = False  # never echo its value (tokens, keys)
    # The inverse of `parse`: the text that parses back to a value, to hand it on as a flag.
    format: Callable[[T], str] = str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def file_env(self) -> str | None:
        """The variable naming a file that holds a secret's value; None for other settings."""
        return self.env + FILE_SUFFIX if self.secret else None

    def described(self, help: str) -> Setting[T]:
        """This setting (flag, variable, default, parser) as another program explains it."""
        return dataclasses.replace(self, help=help)

    def argv(self, value: T) -> list[str]:
        """`value` as this setting's flag and its text; nothing when the text is empty (the
        default then applies, as for an empty environment variable)."""
        written = self.format(value)
        return [self.flag, written] if written else []


class Values:
    """What `load` parsed, by setting; `values[SETTING]` has the type SETTING parses to."""

    def __init__(self, parsed: Mapping[str, object]) -> None:
        self._parsed = dict(parsed)

    def __getitem__(self, setting: Setting[T]) -> T:
        return cast(T, self._parsed[setting.name])


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def load(
    prog: str,
    description: str,
    settings: Sequence[Setting[Any]],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Values:
    env = os.environ if environ is None else environ
    parser = _OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every setting can also be given by the environment variable named in []. "
        f"A secret one, shown as [VARIABLE] or [VARIABLE{FILE_SUFFIX}], can instead be read "
        f"from a file: VARIABLE{FILE_SUFFIX}=/path (under systemd's LoadCredential=, "
        "%d/name); the trailing newline is removed, and setting both is an error.",
    )
    for s in settings:
        shown = s.default if s.default != "" else '""'
        also = f" or [{s.file_env}]" if s.file_env else ""
        parser.add_argument(
            s.flag,
            dest=s.name,
            default=None,
            metavar=s.env,
            help=f"{s.help} [{s.env}]{also} (default: {shown})",
        )
    args = parser.parse_args(argv)
    parsed: dict[str, object] = {}
    for s in settings:
        raw: str | None = getattr(args, s.name)
        source = s.flag
        if raw is None:
            raw, source = _from_environment(prog, s, env)
        if raw is None:
            raw, source = s.default, f"{s.env} (default)"
        try:
            parsed[s.name] = s.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "(value hidden)" if s.secret else repr(raw)
            parser.exit(2, f"{prog}: invalid value {shown} for {source}: {exc}\n")
    return Values(parsed)


def _from_environment(prog: str, s: Setting[Any], env: Mapping[str, str]) -> tuple[str | None, str]:
    """The setting's text from `<ENV>`, or from the file `<ENV>_FILE` names; and its source."""
    value = env.get(s.env) or None
    path = env.get(s.file_env) or None if s.file_env else None
    if path is None or s.file_env is None:
        return value, s.env
    secret = read_secret_file(prog, s.file_env, path) or None
    if value is not None and secret is not None:
        die(prog, f"{s.env} and {s.file_env} are both set: set only one of them")
    if secret is None:
        # An empty file is unset: the units' fallback credential when the operator keeps
        # the secret in the EnvironmentFile instead (as live-webrtc-go's operators do).
        return value, s.env
    return secret, s.file_env


def read_secret_file(prog: str, variable: str, path: str) -> str:
    """The content of the secret file `path` that `variable` names, without its trailing
    newline; exits 2 with one line (the variable, the path, why: never the content)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        die(prog, f"{variable}={path!r}: cannot read the file: {reason}")
    if len(data) > MAX_SECRET_FILE_BYTES:
        die(prog, f"{variable}={path!r}: the file is over {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        die(prog, f"{variable}={path!r}: the file is not UTF-8 text")
    return text.rstrip("\r\n")


def die(prog: str, message: str) -> NoReturn:
    """Exit 2 with one line: for settings that are only invalid in combination."""
    sys.stderr.write(f"{prog}: {message}\n")
    raise SystemExit(2)


# --- parsers (and the formats that invert them) shared by both programs ---------------------


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def format_bool(value: bool) -> str:
    return "true" if value else "false"


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


def format_float(value: float) -> str:
    """The shortest text that parses back to `value` exactly: 30.0 -> '30', 0.25 -> '0.25'."""
    written = repr(value)
    return written[:-2] if written.endswith(".0") else written


def parse_csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def format_csv(values: Sequence[str]) -> str:
    return ",".join(values)


def parse_port_range(raw: str) -> tuple[int, int] | None:
    """'40000-40999' -> (40000, 40999); '' -> None (ports chosen by the OS)."""
    stripped = raw.strip()
    if not stripped:
        return None
    low_text, sep, high_text = stripped.partition("-")
    if not sep:
        raise ValueError("expected LOW-HIGH, e.g. 40000-40999")
    low, high = int(low_text), int(high_text)
    if not 1024 <= low <= high <= 65535:
        raise ValueError("ports must satisfy 1024 <= LOW <= HIGH <= 65535")
    return (low, high)


def parse_optional_port(raw: str) -> int | None:
    """'8189' -> 8189; '' -> None (off)."""
    stripped = raw.strip()
    if not stripped:
        return None
    return parse_int_range(1, 65535)(stripped)


def format_port_range(ports: tuple[int, int] | None) -> str:
    return "" if ports is None else f"{ports[0]}-{ports[1]}"


def parse_ip_list(raw: str) -> list[str]:
    addresses = parse_csv(raw)
    for address in addresses:
        ipaddress.ip_address(address)
    return addresses


def parse_optional_ip(raw: str) -> str | None:
    stripped = raw.strip()
    if not stripped:
        return None
    return str(ipaddress.ip_address(stripped))


def format_optional(value: object | None) -> str:
    return "" if value is None else str(value)


def parse_log_level(raw: str) -> str:
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level
