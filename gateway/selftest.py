"""`sfu-gateway --self-test`: can clients reach the media of this host's workers?

Reads the same settings as the gateway (flags, environment, CONFIG_FILE), starts nothing,
and prints what the local workers would announce (host addresses after the filters, public
addresses, each worker's mux ports), whether each media port can be bound now, and, with
STUN_DISCOVER, whether the announced public address is the one the STUN server sees (a
mismatch is a WARNING naming PUBLIC_IP). Exit 0: fine; 1: a port cannot be bound or an
announced address is wrong; 2: invalid settings. Run it before starting the gateway (a
running gateway's workers hold the ports). docs/networking.md reads an example.

Also `python -m gateway.selftest [settings]`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common import reach
from gateway.config import GatewayConfig, load_all
from gateway.settings import PROG

FLAG = "--self-test"


def run(config: GatewayConfig) -> int:
    media, workers = config.media, config.workers.count
    title = f"{PROG} self-test: {workers} local workers"
    if workers == 0:
        title += " (WORKERS=0: remote workers check themselves, sfu-worker --self-test)"
    ports = reach.MediaPorts(workers, media.udp_mux_port, media.tcp_mux_port, media.udp_ports)
    return reach.check_and_print(
        title,
        media.bind_addresses,
        media.bind_interfaces,
        media.public_ip,
        media.stun_discover,
        ports,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return run(load_all([a for a in args if a != FLAG]).config)


if __name__ == "__main__":
    raise SystemExit(main())
