#!/usr/bin/env bash
# The quickstart demo: real kube-apiserver + etcd, S3 server and Talos API emulator on loopback; the
# operator backs up etcd through the emulator into S3 and the result is shown. `--keep` leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS="$(bash scripts/setup-test-assets.sh | tail -n 1)"
export KUBEBUILDER_ASSETS
cargo run -j2 -q -p talos-etcd-backup --example demo -- "$@"
