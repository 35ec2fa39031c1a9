"""`sculpt serve` pieces: the in-process gRPC thread and the fail-fast bundle check."""

import socket

import grpc
from bundle_factory import make_bundle
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from sculptserve.bundle.load import load_bundle
from sculptserve.cli import cli
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as rpc
from sculptserve.serving.grpc.thread import GrpcThread
from sculptserve.serving.launcher import example_calls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_grpc_thread_serves_the_shared_app_and_stops(tmp_path):
    app = EmbeddingApp(
        load_bundle(make_bundle(tmp_path / "b")), metrics_registry=CollectorRegistry()
    )
    port = free_port()
    thread = GrpcThread(app, port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert rpc.SculptStub(channel).GetInfo(pb.GetInfoRequest()).latent_dim == 3
    thread.stop()
    assert not thread._thread.is_alive()
    with socket.socket() as s:  # nothing listens there any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from our client
        s.bind(("127.0.0.1", port))
    app.close()


def test_serve_refuses_a_bad_bundle_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "no such bundle" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_example_calls_are_valid_for_the_input_shape():
    text = example_calls(3000, 50051, "tabular", [5])
    assert "[0.0]*5" in text and "localhost:3000/embed" in text and "50051" in text
