"""The generated gRPC stubs match proto/ (run `make proto` after editing a .proto)."""

from __future__ import annotations

import pytest

from crdtd.sync import protogen

pytest.importorskip("grpc_tools")


def test_generated_stubs_are_up_to_date() -> None:
    stale = protogen.stale_files()
    assert stale == [], f"stale stubs, run `make proto`: {stale}"


def test_stub_imports_are_rewritten_into_the_package() -> None:
    text = (protogen.OUT_DIR / "crdtd" / "v1" / "peer_pb2_grpc.py").read_text()
    assert "from crdtd.proto_gen.crdtd.v1 import peer_pb2" in text
    assert "\nfrom crdtd.v1 import" not in text


def test_check_mode_reports_a_stale_tree(tmp_path) -> None:
    protogen.generate(tmp_path)
    target = tmp_path / "crdtd" / "v1" / "peer_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    assert protogen.stale_files(tmp_path) == ["crdtd/v1/peer_pb2.py"]
