"""An OpAMP agent on the PyPI package `opentelemetry-opamp-client` (HTTP only), used by
Ampora's interop tests.

It describes itself (service.name plus --attr pairs), reports an effective config, prints
`instance_uid=<uuid>` as its first stdout line and runs until SIGTERM or SIGINT. On stop the
library sends AgentDisconnect.

It applies the remote configs it is offered: the file "" must be YAML without a processor named
`batch/reject` (a component it cannot run), else it reports FAILED. It prints one stdout line per offer, `offer hash=<hex>`,
then `applied hash=<hex>` or `failed hash=<hex> error=<text>`. The library sends a remote config
status alone, without the effective config, so the agent reports both in a full state message.

    python agent.py --url http://127.0.0.1:4320/v1/opamp --name my-service --attr team=obs
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
import threading
import uuid

import yaml
from opentelemetry._opamp import OpAMPAgent, OpAMPCallbacks, OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2


def check(remote_config) -> str:
    """The offered config's text if this agent can run it; raises ValueError otherwise."""
    files = remote_config.config.config_map
    if "" not in files:
        raise ValueError('the offered config has no file ""')
    text = files[""].body.decode("utf-8")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not YAML: {error}") from error
    processors = parsed.get("processors") if isinstance(parsed, dict) else None
    if isinstance(processors, dict) and "batch/reject" in processors:
        raise ValueError("cannot run processor batch/reject")
    return text


class Callbacks(OpAMPCallbacks):
    """Logs what the server says and applies the remote configs it offers."""

    def on_error(self, agent, client, error_response):
        logging.warning("server error: %s", error_response.error_message)

    def on_connect_failed(self, agent, client, error):
        logging.warning("request failed: %s", error)

    def on_message(self, agent, client, message):
        remote_config = message.remote_config
        if remote_config is None:
            return
        config_hash = bytes(remote_config.config_hash)
        print(f"offer hash={config_hash.hex()}", flush=True)
        statuses = opamp_pb2.RemoteConfigStatuses
        try:
            text = check(remote_config)
        except (ValueError, UnicodeDecodeError) as error:
            client.update_remote_config_status(config_hash, statuses.RemoteConfigStatuses_FAILED, str(error))
            agent.send(client.build_full_state_message())
            one_line = " ".join(str(error).split())
            print(f"failed hash={config_hash.hex()} error={one_line}", flush=True)
            return
        client.update_effective_config({"": text}, "text/yaml")
        client.update_remote_config_status(config_hash, statuses.RemoteConfigStatuses_APPLIED)
        agent.send(client.build_full_state_message())
        print(f"applied hash={config_hash.hex()}", flush=True)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="OpAMP HTTP endpoint, e.g. http://host:4320/v1/opamp")
    parser.add_argument("--name", default="interop-python-agent", help="service.name (identifying)")
    parser.add_argument(
        "--attr",
        type=key_value,
        action="append",
        default=[],
        help="non-identifying attribute key=value (repeatable)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between the library's heartbeat requests (it polls with them)",
    )
    parser.add_argument("--timeout-ms", type=int, default=2000, help="per-request timeout")
    parser.add_argument("--debug", action="store_true", help="log the library's debug messages")
    parser.add_argument("--tls-ca", help="CA (PEM) that signs the server's certificate, for https:// URLs")
    parser.add_argument("--tls-cert", help="client certificate (PEM) to present")
    parser.add_argument("--tls-key", help="the client certificate's key (PEM)")
    parser.add_argument("--instance-uid", help="instance uid (default: the library's new UUIDv7)")
    args = parser.parse_args()

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="python-agent: %(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    non_identifying = {"os.type": "linux"}
    non_identifying.update(dict(args.attr))

    client = OpAMPClient(
        endpoint=args.url,
        timeout_millis=args.timeout_ms,
        agent_identifying_attributes={"service.name": args.name, "service.version": "0.0.1"},
        agent_non_identifying_attributes=non_identifying,
        tls_certificate=args.tls_ca or True,
        tls_client_certificate=args.tls_cert,
        tls_client_key=args.tls_key,
    )
    if args.instance_uid:
        # The library has no setting for the uid; a client certificate names one, and the agent
        # must claim that one.
        client._instance_uid = uuid.UUID(args.instance_uid).bytes  # pylint: disable=protected-access
    client.update_effective_config(
        {"": f"# python-agent {args.name}\nexporters:\n  otlp: {{}}\n"},
        "text/yaml",
    )
    agent = OpAMPAgent(interval=args.poll_interval, callbacks=Callbacks(), client=client)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    agent.start()
    # start() registers stop() to run at exit too; we stop explicitly below, and a second
    # stop() would send a second AgentDisconnect.
    atexit.unregister(agent.stop)

    # The library generates the uid (a UUIDv7) and exposes no accessor for it, so read the
    # attribute it keeps it in: the tests must know which agent to look for.
    instance_uid = uuid.UUID(bytes=client._instance_uid)  # pylint: disable=protected-access
    print(f"instance_uid={instance_uid}", flush=True)

    # Event.wait with a timeout keeps the main thread responsive to signals.
    while not stopping.wait(0.5):
        pass
    logging.info("stopping: sending AgentDisconnect")
    agent.stop(timeout=5)


if __name__ == "__main__":
    main()
