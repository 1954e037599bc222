#!/usr/bin/env bash
# One command for the benchmark: installs etcd, rclone and matplotlib, builds release binaries, runs
# bench/run.py (sizes default to 256M,1G,4G; e.g. `bench/run.sh --sizes 256M,1G`), and writes
# docs/benchmarks.md, docs/benchmarks-largest.png, bench/results.json, bench/scale.json and bench/many.json.
set -euo pipefail
cd "$(dirname "$0")/.."
assets="$(bash scripts/setup-test-assets.sh | tail -n 1)"
if ! command -v rclone >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib
cargo build -j2 --release -p talos-etcd-backup -p teb-testkit --bins --example scale --example many_clusters
# Scale on the real apiserver: 50 backups at once, then a restart with 1,050 finished ones.
KUBEBUILDER_ASSETS="$assets" target/release/examples/scale | tee bench/scale.json
# Many clusters: 100 control planes (64–256 MiB etcd, sources at 20 MB/s) on schedules firing at once.
KUBEBUILDER_ASSETS="$assets" target/release/examples/many_clusters | tee bench/many.json
python3 bench/run.py --etcdctl "$assets/etcdctl" "$@"
