#!/bin/sh
# Create the federation for the StatefulSet in ./fed and load it into a Secret.
# Pod N of StatefulSet `crdtd` (service `crdtd-peers`) runs node `crdtd-N`.
#   sh deploy/k8s/make-secret.sh [NAMESPACE] [REPLICAS]
set -eu
NS=${1:-crdtd}
REPLICAS=${2:-3}
DIR=${FED_DIR:-./fed}
crdtd federation init --dir "$DIR" --id hospitals
i=0
while [ "$i" -lt "$REPLICAS" ]; do
    crdtd federation add-node "crdtd-$i" --dir "$DIR" --host "crdtd-$i.crdtd-peers.$NS.svc"
    cat deploy/compose/daemon-sections.toml >> "$DIR/crdtd-$i.toml"
    i=$((i + 1))
done
# The admin key and CA key stay offline: they are not part of the Secret.
kubectl -n "$NS" create secret generic crdtd-federation \
    $(for f in "$DIR"/*.toml "$DIR"/*.key "$DIR"/*.pem "$DIR"/*.membership; do
          case "$(basename "$f")" in admin.key|ca.key) ;; *) printf -- '--from-file=%s ' "$f" ;; esac
      done)
