"""A caller beside an attack: from its own process and connection, a grpc.health.v1 Check
every 10 ms until SIGTERM; then each probe's latency in ms, as JSON, on stdout. In a
process of its own so that the attacker's Python does not delay its probes.

    python -m tests.prober 127.0.0.1:50391
"""

from __future__ import annotations

import json
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(address: str) -> None:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    latencies: list[float] = []
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=10)  # connected and warm
        print("ready", flush=True)
        while not stopping:
            started = time.monotonic()
            try:
                check(health_pb2.HealthCheckRequest(), timeout=5)
                latencies.append((time.monotonic() - started) * 1000)
            except grpc.RpcError as e:
                latencies.append(float("inf") if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else -1.0)
            time.sleep(0.01)
    print(json.dumps(latencies), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
