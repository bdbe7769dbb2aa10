#!/usr/bin/env python3
"""A Maestro client in Python: authenticate, start the scripted demo loop, and
tail its events until it ends. Exit 0 when the loop succeeded, 2 otherwise.

Generate the stubs first (see run.sh):
    python -m grpc_tools.protoc -I ../../../proto --python_out=gen --grpc_python_out=gen \
        ../../../proto/maestro/v1/*.proto

Settings, from the environment:
    MAESTRO_SERVER   host:port, or unix:/path (default: unix:$HOME/.maestro/maestrod.sock)
    MAESTRO_TOKEN    the bearer token (default: ~/.maestro/data/admin.token)
    MAESTRO_CA_FILE  a CA certificate: connect with TLS
    DEMO_WORKSPACE   where the demo builds its project (must not exist)
"""

import os
import pathlib
import sys

import grpc

sys.path.insert(0, os.environ.get("MAESTRO_PY_GEN") or str(pathlib.Path(__file__).resolve().parent / "gen"))
from maestro.v1 import loops_pb2, loops_pb2_grpc, system_pb2, system_pb2_grpc  # noqa: E402


class Bearer(grpc.AuthMetadataPlugin):
    """Sends `authorization: Bearer TOKEN` with every call."""

    def __init__(self, token):
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", f"Bearer {self._token}"),), None)


class BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """The same for a plaintext channel (gRPC sends call credentials only over TLS or local sockets)."""

    def __init__(self, token):
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details):
        metadata = list(details.metadata or []) + list(self._metadata)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)


def channel():
    home = pathlib.Path.home()
    server = os.environ.get("MAESTRO_SERVER") or f"unix:{home / '.maestro' / 'maestrod.sock'}"
    token = os.environ.get("MAESTRO_TOKEN") or (home / ".maestro" / "data" / "admin.token").read_text().strip()
    ca_file = os.environ.get("MAESTRO_CA_FILE")
    if ca_file:
        tls = grpc.ssl_channel_credentials(root_certificates=pathlib.Path(ca_file).read_bytes())
        creds = grpc.composite_channel_credentials(tls, grpc.metadata_call_credentials(Bearer(token)))
        return grpc.secure_channel(server, creds)
    server = server.removeprefix("http://")
    return grpc.intercept_channel(grpc.insecure_channel(server), BearerInterceptor(token))


def main():
    workspace = os.environ.get("DEMO_WORKSPACE") or str(pathlib.Path.cwd() / "maestro-demo")
    with channel() as chan:
        info = system_pb2_grpc.SystemServiceStub(chan).GetInfo(system_pb2.GetInfoRequest())
        print(f"maestrod {info.version}, revision {info.revision}")
        loops = loops_pb2_grpc.LoopServiceStub(chan)
        task = "Build a to-do service: a REST API, a command-line client, and tests"
        started = loops.StartLoop(loops_pb2.StartLoopRequest(task=task, demo=True, workspace=workspace))
        print(f"started {started.loop_id} in project {started.project_id}")
        state = started.state
        for event in loops.StreamLoopEvents(loops_pb2.StreamLoopEventsRequest(loop_id=started.loop_id)):
            phase = f" [{event.phase}]" if event.phase else ""
            print(f"{event.seq:4} {event.kind}{phase} {event.message}")
            if event.state:
                state = event.state
        name = loops_pb2.LoopState.Name(state)
        print(f"loop {started.loop_id}: {name}")
        return 0 if state == loops_pb2.LOOP_STATE_SUCCEEDED else 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as error:
        print(f"maestro_demo: {error.code().name}: {error.details()}", file=sys.stderr)
        sys.exit(1)
