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
if [ "$#" -eq 0 ]; then
  # A test that only waits (a client paused for 130 s, past grpc-go's ping limits) runs beside the
  # rest once everything is built: it uses no CPU, and would otherwise add its 130 s to the run.
  idle=the_talos_client_survives_a_long_pause_in_reading
  cargo test -j2 --workspace --no-run 2>&1 | tail -n 3
  beside_log="$(mktemp)"
  # `--workspace` keeps the workspace's feature set: `-p teb-testkit` alone would rebuild four crates
  # beside the running tests.
  cargo test -j2 --workspace --test emulator -- --exact "$idle" >"$beside_log" 2>&1 &
  beside=$!
  cargo test -j2 --workspace --no-fail-fast -- --skip "$idle" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  wait "$beside"
  beside_status=$?
  tee -a "$log" <"$beside_log"
  rm -f "$beside_log"
  [ "$status" -eq 0 ] && status=$beside_status
else
  cargo test -j2 --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
fi
set -e
# One total over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
