#!/usr/bin/env bash
# Keeps a shared build cache from filling the disk: each change of a crate leaves another copy of
# its test binaries (hundreds of MiB each). Keeps the newest binary of each name and, when the disk
# is short of room (SeaweedFS refuses every write below 1% free), drops incremental state as well.
set -euo pipefail
target="${1:?usage: prune-build-cache.sh TARGET_DIR}"
deps="$target/debug/deps"
[ -d "$deps" ] || exit 0
declare -A seen=()
freed=0
# Newest first; a binary is `name-<16 hex>` without an extension.
while IFS= read -r file; do
  base="$(basename "$file")"
  [[ "$base" =~ ^(.+)-[0-9a-f]{16}$ ]] || continue
  name="${BASH_REMATCH[1]}"
  if [ -n "${seen[$name]:-}" ]; then
    freed=$(( freed + $(stat -c %s "$file") ))
    rm -f "$file"
  else
    seen[$name]=1
  fi
done < <(find "$deps" -maxdepth 1 -type f -executable -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
free_mib=$(( $(df --output=avail -k "$target" | tail -1) / 1024 ))
if [ "$free_mib" -lt 20480 ] && [ -d "$target/debug/incremental" ]; then
  freed=$(( freed + $(du -sb "$target/debug/incremental" | cut -f1) ))
  rm -rf "$target/debug/incremental"
fi
echo "prune-build-cache: freed $(( freed >> 20 )) MiB; $(( $(df --output=avail -k "$target" | tail -1) / 1024 )) MiB free" >&2
