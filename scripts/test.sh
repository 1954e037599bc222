#!/usr/bin/env bash
# The project's test command: sets up etcd, kube-apiserver and Helm's engine (cached after the first
# run), then runs every test, the end-to-end ones included, against real components on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS="$(bash scripts/setup-test-assets.sh | tail -n 1)"
export KUBEBUILDER_ASSETS
# Helm's engine, for the chart's lint and install test.
TEB_HELM_LIB="$(bash scripts/setup-helm-engine.sh | tail -n 1)"
export TEB_HELM_LIB
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test -j2 --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One total over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
