"""Helpers for tests that start a real Triton server."""

from __future__ import annotations

import socket

from sidyp_prod.triton_server import Ports


def free_ports() -> Ports:
    """Three ports nothing listens on right now (HTTP, gRPC, metrics)."""
    sockets = [socket.socket() for _ in range(3)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = Ports(*(s.getsockname()[1] for s in sockets))
    for s in sockets:
        s.close()
    return ports
