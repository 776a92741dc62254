"""The api container's health check: HTTP `/healthz`, and gRPC `ServerLive` when it is on.

    python3 -m service.healthcheck      (exit 0: healthy)

Reads only `CSIPOS_GRPC_PORT` (and `CSIPOS_HEALTHCHECK_HTTP_PORT`, default 8000), so it
starts fast and never fails on settings the server itself would accept.
"""

from __future__ import annotations

import os
import sys
import urllib.request

import grpc

TIMEOUT_S = 2.0


def check(http_port: int, grpc_port: int | None) -> None:
    """Raise if either protocol does not answer on loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=TIMEOUT_S):
        pass
    if grpc_port:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            live: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive"
            )
            live(b"", timeout=TIMEOUT_S)  # an empty ServerLiveRequest


def main() -> None:
    grpc_port = os.environ.get("CSIPOS_GRPC_PORT")
    try:
        check(
            int(os.environ.get("CSIPOS_HEALTHCHECK_HTTP_PORT", "8000")),
            int(grpc_port) if grpc_port else None,
        )
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)  # noqa: T201 (a CLI's one line)
        sys.exit(1)


if __name__ == "__main__":
    main()
