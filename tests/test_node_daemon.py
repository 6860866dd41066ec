"""`crdtd start` as a real process: clean SIGTERM, restart with everything kept, config errors
exit 2 naming the key and file, structured logs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from crdtd.client import Client
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from tests.node_support import NAMESPACE, Daemon, checkpoint, crdtd_command, federation

pytestmark = pytest.mark.multiprocess


def test_sigterm_exits_zero_and_a_restart_keeps_everything(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1)
    node = Daemon(config).start()
    with node.client() as c:
        pushed = [
            c.push(
                NAMESPACE,
                checkpoint(tmp_path / f"{i}.safetensors", float(i), seed=i),
                metadata={"num_examples": 10 + i},
            )
            for i in range(3)
        ]
        blob = c.push("blobs/raw", b"kept across restarts")
        merged = c.materialise(NAMESPACE)
        before = c.status()
        in_flight = _slow_push(c, node)  # SIGTERM arrives mid-stream: the push still lands
    assert node.stop(signal.SIGTERM) == 0
    assert "daemon.stopped" in node.log()

    node.start()
    with node.client() as c:
        after = c.status()
        grown = {
            k: v + (k in ("contribution", "live", "visible"))
            for k, v in before.entry_counts.items()
        }
        assert after.entry_counts == grown  # everything before, plus the drained push
        assert {e.id for e in c.list(NAMESPACE)} == {p.entry_id for p in pushed}
        assert c.get(blob.entry_id)[1] == b"kept across restarts"
        assert c.get(in_flight)[1] == b"slow " * 4000
        assert c.materialise(NAMESPACE).output_sha256 == merged.output_sha256
        again = c.push(NAMESPACE, tmp_path / "0.safetensors", metadata={"num_examples": 10})
        assert again.already_present and again.entry_id == pushed[0].entry_id
    assert node.stop(signal.SIGINT) == 0

    events = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("daemon.started") == 2 and names.count("daemon.stopped") == 2
    assert {"ts", "level", "event"} <= set(events[0])
    assert any(e["event"] == "push.accepted" and e["namespace"] == NAMESPACE for e in events)


def _slow_push(c: Client, node: Daemon) -> bytes:
    """Push in pieces with pauses, sending SIGTERM to the daemon after the first piece."""
    data = b"slow " * 4000
    pieces = [data[i : i + 4000] for i in range(0, len(data), 4000)]

    def messages():
        yield pb.PushRequest(header=pb.PushHeader(namespace="blobs/raw", payload_size=len(data)))
        for i, piece in enumerate(pieces):
            if i == 1:
                # the call has been open on the server since the first piece went out (the
                # channel asked for this one after it); a signal sent while the generator
                # still held the first piece could reach the daemon before the call did,
                # and a call that arrives after shutdown began is refused (CANCELLED)
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
            yield pb.PushRequest(data=piece)
            time.sleep(0.1)

    reply = c.stub.PushContribution(messages(), metadata=c._meta, timeout=30)
    return bytes(reply.entry_id)


def test_invalid_config_exits_2_naming_the_key_and_file(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1)
    config.write_text(config.read_text() + '\n[auth]\nmode = "open"\n')
    proc = subprocess.run(
        [*crdtd_command(), "start", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert str(config) in proc.stderr and "[auth] mode" in proc.stderr
    assert "'open' is not one of token, mtls, none" in proc.stderr


def test_a_certificate_of_another_key_exits_2_at_start_not_at_the_first_handshake(
    tmp_path: Path,
) -> None:
    configs = federation(tmp_path, 2)
    text = configs[0].read_text()
    configs[0].write_text(text.replace('cert = "site-a.tls.pem"', 'cert = "site-b.tls.pem"'))
    proc = subprocess.run(
        [*crdtd_command(), "start", "--config", str(configs[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "site-b.tls.pem names key" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_second_daemon_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1)
    first = Daemon(config).start()
    try:
        second = config.with_name("second.toml")
        text = config.read_text()
        for key in (
            '[client]\nhost = "127.0.0.1"\nport = ',
            '[metrics]\nhost = "127.0.0.1"\nport = ',
        ):
            start = text.index(key) + len(key)
            end = text.index("\n", start)
            text = text[:start] + "0" + text[end:]
        second.write_text(text)
        proc = subprocess.run(
            [*crdtd_command(), "start", "--config", str(second)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        assert "another crdtd daemon is running on this data directory" in proc.stdout + proc.stderr
    finally:
        assert first.stop() == 0
