"""The crdtd daemon: config, client gRPC service, metrics, logs, CLI verbs and the demo.

`crdtd.node.config.load_daemon_config(path)` reads a node config (the identity sections from
`crdtd.crypto.node_config` plus the daemon's own); `crdtd.node.daemon.run(config)` serves it
until SIGTERM. Clients use `crdtd.client.Client`.
"""

from __future__ import annotations
