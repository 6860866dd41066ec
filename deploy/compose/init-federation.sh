#!/bin/sh
# Create a three-node federation in $FED_DIR once (docker-compose's `init` service).
# Nodes are named node-a, node-b, node-c and reach each other by those host names; the
# daemon sections come from $SECTIONS (deploy/compose/daemon-sections.toml).
set -eu
FED_DIR=${FED_DIR:-/federation}
SECTIONS=${SECTIONS:-/deploy/daemon-sections.toml}
if [ -f "$FED_DIR/federation.toml" ]; then
    echo "federation already exists in $FED_DIR"
    exit 0
fi
crdtd federation init --dir "$FED_DIR" --id hospitals
port=7400
for name in node-a node-b node-c; do
    crdtd federation add-node "$name" --dir "$FED_DIR" --host "$name" \
        --peer-port "$port" --client-port $((port + 1)) --metrics-port $((port + 2001))
    cat "$SECTIONS" >> "$FED_DIR/$name.toml"
    port=$((port + 10))
done
echo "federation hospitals ready in $FED_DIR"
