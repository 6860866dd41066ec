"""The client API of one real node (in-process daemon, real gRPC on loopback, real store)."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from crdtd.client import Client
from crdtd.crypto import federation as fed
from crdtd.crypto.keys import NodeKey
from crdtd.errors import CrdtdError
from crdtd.node.metrics import fingerprint
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import node_pb2_grpc as pb_grpc
from crdtd.state.entry import Entry, Kind, make_removal
from crdtd.trust.evidence import WEIGHT_UNIT, ProofKind, evidence_entry, proof_for_equivocation
from tests.node_support import NAMESPACE, InProcessNode, checkpoint, federation, wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    root = tmp_path_factory.mktemp("node")
    (config,) = federation(root, 1, limits={"max_payload": "64KiB", "drain_timeout_ms": 2000})
    n = InProcessNode(config)
    yield n
    n.stop()


@pytest.fixture()
def client(node: InProcessNode) -> Client:
    with node.client() as c:
        yield c


def code_of(exc: pytest.ExceptionInfo[CrdtdError]) -> grpc.StatusCode:
    return exc.value.code  # type: ignore[attr-defined]


def test_pushed_checkpoints_merge_weighted_by_examples(client: Client, tmp_path: Path) -> None:
    a = client.push(
        NAMESPACE, checkpoint(tmp_path / "a.safetensors", 1.0), metadata={"num_examples": 10}
    )
    b = client.push(
        NAMESPACE, checkpoint(tmp_path / "b.safetensors", 4.0), metadata={"num_examples": 30}
    )
    out = tmp_path / "merged.safetensors"
    m = client.materialise(NAMESPACE, out=out)
    assert set(m.inputs) >= {a.entry_id, b.entry_id}
    import hashlib

    assert m.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert m.strategy == "fedavg" and len(m.input_set_digest) == 64
    bias = load_file(str(out))["layer.bias"]
    # only these two contributions are in this namespace at this point of the module
    if len(m.inputs) == 2:
        assert torch.allclose(bias, torch.full_like(bias, -(1.0 * 10 + 4.0 * 30) / 40))


def test_materialising_twice_gives_the_same_bytes(client: Client, tmp_path: Path) -> None:
    client.push(NAMESPACE, checkpoint(tmp_path / "c.safetensors", 2.0, seed=3))
    first = client.materialise(NAMESPACE, out=tmp_path / "m1.safetensors")
    second = client.materialise(NAMESPACE, out=tmp_path / "m2.safetensors")
    assert first.output_sha256 == second.output_sha256
    assert (tmp_path / "m1.safetensors").read_bytes() == (tmp_path / "m2.safetensors").read_bytes()


def test_materialise_on_node_writes_inside_output_dir_only(
    node: InProcessNode, client: Client, tmp_path: Path
) -> None:
    client.push(NAMESPACE, checkpoint(tmp_path / "d.safetensors", 3.0, seed=4))
    m = client.materialise(NAMESPACE, remote_path="runs/merged.safetensors")
    written = Path(m.out_path)
    assert written.is_file() and written.is_relative_to(node.daemon.config.output_dir)
    with pytest.raises(CrdtdError) as exc:
        client.materialise(NAMESPACE, remote_path=str(tmp_path / "elsewhere.safetensors"))
    assert code_of(exc) is grpc.StatusCode.PERMISSION_DENIED
    assert "outside [materialise] output_dir" in str(exc.value)


def test_repeated_push_is_acknowledged_without_a_second_entry(
    client: Client, tmp_path: Path
) -> None:
    path = checkpoint(tmp_path / "r.safetensors", 5.0, seed=5)
    first = client.push(NAMESPACE, path, metadata={"num_examples": 7})
    again = client.push(NAMESPACE, path, metadata={"num_examples": 7})
    assert again.already_present and again.entry_id == first.entry_id
    ids = [e.id for e in client.list(NAMESPACE)]
    assert ids.count(first.entry_id) == 1


def _bad_safetensors(tmp_path: Path) -> bytes:
    return b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 16


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("malformed safetensors", grpc.StatusCode.INVALID_ARGUMENT, "not a valid safetensors"),
        ("over the maximum", grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds this node's maximum"),
        ("unknown namespace", grpc.StatusCode.NOT_FOUND, "'model/nope' is not declared"),
        ("unknown strategy", grpc.StatusCode.INVALID_ARGUMENT, "unknown strategy 'tiez'"),
        ("bad params", grpc.StatusCode.INVALID_ARGUMENT, "parameter 'density'"),
        ("unknown param", grpc.StatusCode.INVALID_ARGUMENT, "unknown parameter 'colour'"),
        ("no token", grpc.StatusCode.UNAUTHENTICATED, "no bearer token"),
        ("wrong token", grpc.StatusCode.UNAUTHENTICATED, "wrong bearer token"),
        ("bytes in a safetensors namespace", grpc.StatusCode.INVALID_ARGUMENT, "takes safetensors"),
    ],
)
def test_bad_input_gets_a_status_naming_the_problem_and_the_node_keeps_serving(
    node: InProcessNode,
    client: Client,
    tmp_path: Path,
    case: str,
    code: grpc.StatusCode,
    words: str,
) -> None:
    good = checkpoint(tmp_path / "ok.safetensors", 1.0)
    with pytest.raises(CrdtdError) as exc:
        if case == "malformed safetensors":
            client.push(NAMESPACE, _bad_safetensors(tmp_path))
        elif case == "over the maximum":
            client.push(NAMESPACE, b"\x00" * (65 * 1024))
        elif case == "unknown namespace":
            client.push("model/nope", good)
        elif case == "unknown strategy":
            client.materialise(NAMESPACE, strategy="tiez")
        elif case == "bad params":
            client.materialise(NAMESPACE, strategy="ties", params={"density": "lots"})
        elif case == "unknown param":
            client.materialise(NAMESPACE, params={"colour": "blue"})
        elif case == "no token":
            with Client(node.address) as anonymous:
                anonymous.status()
        elif case == "wrong token":
            with Client(node.address, token="not-the-token") as stranger:
                stranger.list()
        else:
            client.push(NAMESPACE, good, payload_kind="bytes")
    assert code_of(exc) is code, str(exc.value)
    assert words in str(exc.value)
    assert client.status().node_name == "site-a"  # still serving


def test_a_push_that_ends_early_is_refused_and_nothing_is_stored(
    node: InProcessNode, client: Client
) -> None:
    before = client.status().state_root
    channel = grpc.insecure_channel(node.address)
    stub = pb_grpc.NodeStub(channel)

    def messages():
        yield pb.PushRequest(header=pb.PushHeader(namespace=NAMESPACE, payload_size=1000))
        yield pb.PushRequest(data=b"\x00" * 10)

    with pytest.raises(grpc.RpcError) as exc:
        stub.PushContribution(messages(), metadata=client._meta)
    channel.close()
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "ended after 10 of 1000" in exc.value.details()
    assert client.status().state_root == before


def test_erased_contribution_payload_is_gone(
    node: InProcessNode, client: Client, tmp_path: Path
) -> None:
    r = client.push("blobs/raw", b"patient 17 records " * 100)
    manifest = node.core.state.store.get_manifest(r.payload_digest)
    assert all(node.core.state.store.has_chunk(c.digest) for c in manifest.chunks)
    removal, erased = client.erase([r.entry_id], reason="right to be forgotten")
    assert erased == 1 and len(removal) == 32
    assert not any(node.core.state.store.has_chunk(c.digest) for c in manifest.chunks)
    with pytest.raises(CrdtdError) as exc:
        client.get(r.entry_id)
    assert code_of(exc) is grpc.StatusCode.NOT_FOUND and "erased" in str(exc.value)
    listed = {e.id: e for e in client.list("blobs/raw", include_removed=True)}
    assert listed[r.entry_id].removed


def test_get_returns_the_pushed_bytes(client: Client) -> None:
    data = bytes(range(256)) * 10
    r = client.push("blobs/raw", data, metadata={"site": "a", "rows": 3})
    info, payload = client.get(r.entry_id)
    assert payload == data
    assert info.metadata == {"rows": 3, "site": "a"} and info.payload_size == len(data)


def test_erasing_another_authors_entry_needs_the_admin(
    node: InProcessNode, client: Client, tmp_path: Path
) -> None:
    federation_dir = fed.Federation.load(node.config.parent)
    with pytest.raises(CrdtdError) as exc:
        client.erase(author=federation_dir.admin.key_id)
    assert code_of(exc) is grpc.StatusCode.PERMISSION_DENIED
    assert "signed by the federation admin" in str(exc.value)
    r = client.push("blobs/raw", b"to be erased by the admin")
    removal = federation_dir.sign_admin_entry(
        lambda admin, seq, prev: make_removal(admin, seq, prev, [r.entry_id], reason="gdpr")
    )
    _, erased = client.erase(removal=removal)
    assert erased == 1


def test_push_signed_by_a_member_key_is_authored_by_that_member(
    node: InProcessNode, client: Client, tmp_path: Path
) -> None:
    d = node.config.parent
    member = fed.add_node(d, f"lab-{tmp_path.name[-6:].lower().replace('_', '-')}")
    client.submit(member.membership_bytes())
    key = member.load_key()
    r = client.push(
        NAMESPACE,
        checkpoint(tmp_path / "m.safetensors", 6.0, seed=9),
        key=key,
        metadata={"num_examples": 3},
    )
    assert r.author == key.key_id and r.seq == 1
    outsider = NodeKey.generate()
    with pytest.raises(CrdtdError) as exc:
        client.push(NAMESPACE, checkpoint(tmp_path / "o.safetensors", 6.0), key=outsider)
    assert code_of(exc) is grpc.StatusCode.PERMISSION_DENIED
    assert "not a federation member" in str(exc.value)


def test_health_check_is_open_and_reflection_lists_the_node_service(node: InProcessNode) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(node.address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="crdtd.v1.Node"), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        token = Client.from_config(node.config)._meta
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(stub.ServerReflectionInfo(iter([req]), metadata=token, timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"crdtd.v1.Node", "grpc.health.v1.Health"} <= names


def test_watch_streams_the_entries_a_push_adds(node: InProcessNode, client: Client) -> None:
    events: list[pb.Event] = []
    ready = threading.Event()

    def watch() -> None:
        with node.client() as w:
            stream = w.watch("blobs/raw")
            ready.set()
            for ev in stream:
                events.append(ev)
                if ev.kind == "entry_applied":
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(10)
    import time

    time.sleep(0.5)  # the stream is open once the server has the call
    r = client.push("blobs/raw", b"watched payload")
    t.join(20)
    assert [e.entry_id for e in events if e.kind == "entry_applied"] == [r.entry_id]
    assert events[-1].namespace == "blobs/raw" and events[-1].entry_kind == "contribution"


def test_status_and_trust_describe_the_node(node: InProcessNode, client: Client) -> None:
    s = client.status()
    assert s.node_id == node.core.key_id and s.federation_id == "test-fed"
    assert s.state_root == node.core.state.merkle_root()
    assert s.entry_counts["membership"] >= 1
    t = client.trust()
    assert node.core.key_id in {x.key_id for x in t.scores}
    assert len(t.digest) == 64 and t.threshold == pytest.approx(0.5)


def test_metrics_endpoint_exports_the_state_root_fingerprint(
    node: InProcessNode, client: Client
) -> None:
    root = client.status().state_root  # also counts one OK Status request before the scrape
    address = node.daemon.config.metrics_address

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert "crdtd_build_info{" in text
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    # rounds run even with no peer yet; the first may not have run when the test starts
    values = wait_for(lambda: (v := scrape())["crdtd_gossip_rounds_total"] >= 1 and v, 30)
    assert values["crdtd_state_root_fingerprint"] == fingerprint(root)
    assert values['crdtd_entries{kind="membership",state="live"}'] >= 1
    assert values['crdtd_client_requests_total{code="OK",method="Status"}'] >= 1


def test_mutual_tls_client_mode_refuses_callers_without_a_certificate(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1, auth={"mode": "mtls"})
    n = InProcessNode(config)
    try:
        with n.client(timeout=10) as c:
            assert c.status().node_name == "site-a"
        with Client(n.address, timeout=5) as plain, pytest.raises(CrdtdError) as exc:
            plain.status()
        assert code_of(exc) is grpc.StatusCode.UNAVAILABLE
    finally:
        n.stop()


def test_config_json_of_the_materialise_params_is_canonical(client: Client, tmp_path: Path) -> None:
    m = client.materialise(NAMESPACE, strategy="linear", params={"normalize": True})
    assert json.loads(m.params_json) == {"normalize": True} and m.strategy == "linear"


def test_an_equivocating_author_is_left_out_of_materialise_with_the_reason(
    node: InProcessNode, client: Client, tmp_path: Path
) -> None:
    member = fed.add_node(node.config.parent, "lab-equivocator")
    observer = fed.add_node(node.config.parent, "lab-observer")
    for m in (member, observer):
        client.submit(m.membership_bytes())
    key = member.load_key()
    first = client.push(NAMESPACE, checkpoint(tmp_path / "eq.safetensors", 9.0), key=key)
    forks = [make_removal(key, 2, first.entry_id, [bytes(32)], reason=r) for r in ("a", "b")]
    evidence = evidence_entry(
        observer.load_key(),
        1,
        None,
        key.key_id,
        "causality",
        -WEIGHT_UNIT,
        epoch=0,
        proof_kind=ProofKind.EQUIVOCATION,
        proof_data=proof_for_equivocation(*forks),
    )
    client.submit(evidence)
    m = client.materialise(NAMESPACE)
    assert first.entry_id not in m.inputs
    (why,) = [reason for author, reason in m.excluded if author == key.key_id]
    assert "below_threshold" in why and "equivocation" in why
    scores = {s.key_id: s for s in client.trust().scores}
    assert scores[key.key_id].gated and scores[key.key_id].trust == 0
    assert any("equivocation" in f for f in scores[key.key_id].faults)


def test_status_reads_the_kept_counts_without_decoding_entries(
    node: InProcessNode, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        client.push("blobs/raw", b"counted %d " % i * 20)
    expected = node.core.state.visible()
    decoded = []
    real = Entry.from_bytes.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Entry], data: bytes) -> Entry:
        decoded.append(data)
        return real(cls, data)

    monkeypatch.setattr(Entry, "from_bytes", classmethod(counting))
    s = client.status()
    # O(namespaces): no contribution is decoded (peer names come from membership entries)
    assert all(real(Entry, d).kind is not Kind.CONTRIBUTION for d in decoded)
    assert s.entry_counts["visible"] == len(expected)
    info = {n.name: n for n in s.namespace_info}
    mine = [e for e in expected if e.body.namespace == "blobs/raw"]
    assert info["blobs/raw"].contributions == len(mine)
    assert info["blobs/raw"].payload_bytes == sum(e.body.payload_size for e in mine)


def test_status_shows_each_namespace_kind_and_size(client: Client, tmp_path: Path) -> None:
    client.push("blobs/raw", b"some opaque bytes " * 10)
    info = {n.name: n for n in client.status().namespace_info}
    assert set(info) == {NAMESPACE, "model/ties", "blobs/raw"}
    assert all(n.kind == "model" for n in info.values())
    raw = info["blobs/raw"]
    assert raw.contributions >= 1 and raw.payload_bytes >= 180
    assert raw.settings["payload_kind"] == "bytes"
    assert info["model/ties"].settings["strategy"] == "ties"


def test_materialise_reports_the_kind_and_format_of_its_output(
    client: Client, tmp_path: Path
) -> None:
    client.push(NAMESPACE, checkpoint(tmp_path / "k.safetensors", 2.0))
    m = client.materialise(NAMESPACE, out=tmp_path / "m.safetensors")
    assert (m.kind, m.format) == ("model", "safetensors")
    with pytest.raises(CrdtdError, match="its output is safetensors, not 'parquet'"):
        client.materialise(NAMESPACE, out=tmp_path / "m.parquet", format="parquet")
