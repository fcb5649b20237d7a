"""sfu-gateway: HTTP (WHIP/WHEP) front and worker supervisor. Never imports aiortc, av or sfu."""
