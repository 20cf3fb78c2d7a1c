"""An OpAMP agent on the PyPI package `opentelemetry-opamp-client` (HTTP), for Ampora's
interop tests. Prints its instance uid on the first line and runs until SIGTERM, when the
client library sends AgentDisconnect."""

import argparse
import signal
import sys
import threading
import uuid

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient


class Callbacks(OpAMPCallbacks):
    def on_error(self, agent, client, error_response):
        print(f"server error: {error_response.error_message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", default="interop-python-agent")
    parser.add_argument("--attr", action="append", default=[], help="non-identifying key=value")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="heartbeat seconds")
    args = parser.parse_args()

    non_identifying = {"os.type": "linux"}
    for pair in args.attr:
        key, _, value = pair.partition("=")
        non_identifying[key] = value

    client = OpAMPClient(
        endpoint=args.url,
        agent_identifying_attributes={"service.name": args.name, "service.version": "0.0.1"},
        agent_non_identifying_attributes=non_identifying,
    )
    client.update_effective_config({"": f"exporters:\n  otlp: {{}}\n# python-agent {args.name}\n"}, "text/yaml")
    agent = OpAMPAgent(interval=args.poll_interval, callbacks=Callbacks(), client=client)

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    agent.start()
    # The library keeps the uid private; the tests need to know which agent to look for.
    print(f"instance_uid={uuid.UUID(bytes=client._instance_uid)}", flush=True)
    stopped.wait()
    agent.stop(timeout=5)


if __name__ == "__main__":
    main()
