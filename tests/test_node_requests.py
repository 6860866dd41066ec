"""What a client sends is never echoed unbounded, and nothing it sends twice is silently
dropped: a real in-process daemon, real gRPC, the Python client and raw stubs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from crdtd.cli import main
from crdtd.client import Client
from crdtd.errors import CrdtdError, clip, echo
from crdtd.node.config import read_token
from crdtd.node.metadata_pb import meta_to_pb
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import node_pb2_grpc as pb_grpc
from tests.node_support import NAMESPACE, InProcessNode, checkpoint, federation

BIG = "x" * 100_000
MAX_MESSAGE_SEEN = 600
"""A status message naming a 100k-character value stays this short."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    (config,) = federation(tmp_path_factory.mktemp("requests"), 1)
    n = InProcessNode(config)
    yield n
    n.stop()


@pytest.fixture()
def client(node: InProcessNode) -> Iterator[Client]:
    with node.client(timeout=30) as c:
        yield c


def refused(call: Callable[[], Any]) -> CrdtdError:
    with pytest.raises(CrdtdError) as info:
        call()
    return info.value


def test_echo_shows_a_bounded_prefix_and_the_full_length() -> None:
    shown = echo(BIG)
    assert len(shown) < 150 and shown.startswith("'xxx") and "100002 characters" in shown
    assert echo(b"\x01" * 50_000).startswith("0101") and len(echo(b"\x01" * 50_000)) < 150
    assert echo("model/mlp") == "'model/mlp'"
    assert clip("short", 10) == "short"


CASES: dict[str, tuple[Callable[[Client, Path], Any], grpc.StatusCode, str]] = {
    "push to a namespace": (
        lambda c, p: c.push(BIG, p),
        grpc.StatusCode.NOT_FOUND,
        "is not declared",
    ),
    "push with a payload kind": (
        lambda c, p: c.push(NAMESPACE, p, payload_kind=BIG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "takes safetensors payloads",
    ),
    "materialise a namespace": (
        lambda c, p: c.materialise(BIG, out=p.with_suffix(".out")),
        grpc.StatusCode.NOT_FOUND,
        "is not declared",
    ),
    "materialise with a strategy": (
        lambda c, p: c.materialise(NAMESPACE, out=p.with_suffix(".out"), strategy=BIG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown strategy",
    ),
    "materialise with a parameter name": (
        lambda c, p: c.materialise(NAMESPACE, out=p.with_suffix(".out"), params={BIG: 1}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown parameter",
    ),
    "materialise with a parameter value": (
        lambda c, p: c.materialise(
            NAMESPACE, out=p.with_suffix(".out"), strategy="ties", params={"density": BIG}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be float",
    ),
    "materialise with a dtype": (
        lambda c, p: c.materialise(NAMESPACE, out=p.with_suffix(".out"), dtype=BIG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown dtype",
    ),
    "materialise to a path on the node": (
        lambda c, p: c.materialise(NAMESPACE, remote_path=BIG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not a usable path",
    ),
    "get an entry id": (
        lambda c, p: c.get(BIG.encode()),
        grpc.StatusCode.NOT_FOUND,
        "is not in the store",
    ),
    "erase an entry id": (
        lambda c, p: c.erase([BIG.encode()]),
        grpc.StatusCode.NOT_FOUND,
        "is not held by this node",
    ),
    "erase an author": (
        lambda c, p: c.erase(author=BIG.encode()),
        grpc.StatusCode.PERMISSION_DENIED,
        "needs a removal signed by the federation admin",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_100k_character_value_gets_its_status_with_a_short_message(
    node: InProcessNode, client: Client, tmp_path: Path, case: str
) -> None:
    call, code, says = CASES[case]
    model = checkpoint(tmp_path / "m.safetensors", 1.0)
    client.push(NAMESPACE, model)  # something to materialise
    before = client.status().state_root
    err = refused(lambda: call(client, model))
    assert err.code is code, (case, str(err)[:200])  # type: ignore[attr-defined]
    assert says in str(err) and len(str(err)) < MAX_MESSAGE_SEEN, (case, str(err)[:200])
    assert "100002 characters" in str(err) or "200000 characters" in str(err)
    assert client.status().state_root == before


def raw_push(node: InProcessNode, header: pb.PushHeader, data: bytes) -> Any:
    token = read_token(node.daemon.config.token_file)
    with grpc.insecure_channel(node.address) as channel:
        stub = pb_grpc.NodeStub(channel)
        messages = iter([pb.PushRequest(header=header), pb.PushRequest(data=data)])
        return stub.PushContribution(
            messages, metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )


def test_duplicate_metadata_keys_in_a_push_are_refused_naming_the_key(
    node: InProcessNode, tmp_path: Path
) -> None:
    data = checkpoint(tmp_path / "d.safetensors", 5.0, seed=9).read_bytes()
    header = pb.PushHeader(
        namespace=NAMESPACE,
        payload_size=len(data),
        metadata=[
            pb.KeyValue(key="num_examples", value=meta_to_pb(10)),
            pb.KeyValue(key="site", value=meta_to_pb("a")),
            pb.KeyValue(key="num_examples", value=meta_to_pb(99)),
        ],
    )
    before = node.core.state.merkle_root()
    with pytest.raises(grpc.RpcError) as info:
        raw_push(node, header, data)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'num_examples' is given more than once" in info.value.details()
    assert node.core.state.merkle_root() == before
    del header.metadata[2]
    reply = raw_push(node, header, data)  # the same push without the repeat goes in
    assert len(reply.entry_id) == 32


def test_duplicate_materialise_parameters_are_refused_naming_the_key(
    node: InProcessNode, client: Client, tmp_path: Path
) -> None:
    client.push(NAMESPACE, checkpoint(tmp_path / "e.safetensors", 1.0))
    token = read_token(node.daemon.config.token_file)
    request = pb.MaterialiseRequest(
        namespace="model/ties",
        params=[pb.Param(key="density", value="0.2"), pb.Param(key="density", value="0.9")],
    )
    with grpc.insecure_channel(node.address) as channel:
        stream = pb_grpc.NodeStub(channel).Materialise(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'density' is given more than once" in info.value.details()


def test_cli_refuses_a_repeated_meta_key(
    node: InProcessNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = checkpoint(tmp_path / "f.safetensors", 2.0)
    argv = ["push", NAMESPACE, str(model), "--meta", "num_examples=1", "--meta", "num_examples=2"]
    assert main([*argv, "--config", str(node.config)]) == 1
    assert "--meta 'num_examples' is given more than once" in capsys.readouterr().err
