#!/usr/bin/env bash
# Local base images for the container test, since no image registry is reachable here:
#
#   localhost/service-test/python-base   Debian bookworm (debootstrap minbase) with python3,
#                                        python3-venv and ca-certificates
#   localhost/service-test/node-base     the same root filesystem plus this machine's Node
#                                        (/usr/bin/node and /usr/lib/node_modules/npm)
#
# The machine's CA certificates go in too (the bundle and /usr/local/share/ca-certificates), so
# pip and npm inside the build trust the HTTPS proxy. The debootstrap root filesystem is kept as
# a tarball in CACHE_DIR for up to a week, keyed by this script and the CA certificates, so later
# runs on the same machine skip debootstrap; Node is added at import time, never cached.
#
# Usage: base-images.sh CACHE_DIR WORK_DIR
# podman must already point at the caller's own state (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF).
set -euo pipefail

cache_dir=$1
work_dir=$2
mirror=http://deb.debian.org/debian
packages=python3,python3-venv,ca-certificates
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
bundle=/etc/ssl/certs/ca-certificates.crt

for tool in debootstrap podman node npm; do
  command -v "$tool" >/dev/null || { echo "base-images.sh: $tool is missing" >&2; exit 1; }
done
node_dir=$(dirname "$(readlink -f "$(command -v npm)")")/..   # .../node_modules/npm
node_dir=$(readlink -f "$node_dir")
[ -f "$node_dir/package.json" ] || { echo "base-images.sh: npm not found at $node_dir" >&2; exit 1; }

extra_certs=(/usr/local/share/ca-certificates/*.crt)
[ -e "${extra_certs[0]}" ] || extra_certs=()
key=$(cat "$0" "$bundle" "${extra_certs[@]}" | sha256sum | cut -c1-16)
rootfs_tar=$cache_dir/bookworm-$key.tar
mkdir -p "$cache_dir" "$work_dir"

# Stale tarballs (older than a week, or of another key) go.
find "$cache_dir" -maxdepth 1 -name 'bookworm-*.tar' \( -mtime +7 -o ! -name "bookworm-$key.tar" \) \
  -delete

if [ -f "$rootfs_tar" ]; then
  echo "base-images.sh: cached root filesystem $rootfs_tar"
else
  rootfs=$work_dir/rootfs
  rm -rf "$rootfs"
  started=$SECONDS
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" \
    >"$work_dir/debootstrap.log" 2>&1 || {
    tail -n 30 "$work_dir/debootstrap.log" >&2
    echo "base-images.sh: debootstrap failed (log: $work_dir/debootstrap.log)" >&2
    exit 1
  }
  if [ ${#extra_certs[@]} -gt 0 ]; then
    cp "${extra_certs[@]}" "$rootfs/usr/local/share/ca-certificates/"
  fi
  cp "$bundle" "$rootfs$bundle"
  printf '[global]\ncert = %s\n' "$bundle" >"$rootfs/etc/pip.conf"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*_Packages
  tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  rm -rf "$rootfs"
  echo "base-images.sh: debootstrap took $((SECONDS - started)) s"
fi

podman import --quiet \
  --change "ENV PATH=$path" --change "ENV LANG=C.UTF-8" \
  "$rootfs_tar" localhost/service-test/python-base >/dev/null

# Node: the binary and npm's directory, in a tree of their own appended to the root filesystem.
node_root=$work_dir/node-root
rm -rf "$node_root"
mkdir -p "$node_root/usr/bin" "$node_root/usr/lib/node_modules"
cp "$(readlink -f "$(command -v node)")" "$node_root/usr/bin/node"
cp -a "$node_dir" "$node_root/usr/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$node_root/usr/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$node_root/usr/bin/npx"
cp "$rootfs_tar" "$work_dir/node-base.tar"
tar -C "$node_root" --numeric-owner --owner=0 --group=0 -rf "$work_dir/node-base.tar" ./usr/bin/node \
  ./usr/bin/npm ./usr/bin/npx ./usr/lib/node_modules
podman import --quiet \
  --change "ENV PATH=$path" --change "ENV LANG=C.UTF-8" \
  --change "ENV NODE_EXTRA_CA_CERTS=$bundle" \
  "$work_dir/node-base.tar" localhost/service-test/node-base >/dev/null
rm -rf "$node_root" "$work_dir/node-base.tar"
echo "base-images.sh: node $(node --version), npm $(npm --version) copied into the node base"
