#!/usr/bin/env bash
# The project's test command: sets up etcd and kube-apiserver (cached after the first run), then runs
# every test, the end-to-end ones included, against real components on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS="$(bash scripts/setup-test-assets.sh | tail -n 1)"
export KUBEBUILDER_ASSETS
cargo test -j2 --workspace "$@"
