#!/usr/bin/env bash
# Makes local stand-ins for the two public base images the top-level Dockerfile names, for
# machines that cannot pull from a public registry (ours cannot). Both are Debian bookworm root
# filesystems made with debootstrap from the apt mirror this machine already uses:
#
#   docker.io/library/debian:bookworm-slim   minbase: what the runtime stage needs
#   docker.io/library/rust:1-slim-bookworm   minbase + gcc, libc6-dev, ca-certificates, and this
#                                            machine's own Rust toolchain (rustc, cargo) copied
#                                            into /usr/local/cargo, as the official image has it,
#                                            and this machine's CA bundle (to reach crates.io)
#
# Then the Dockerfile builds unchanged, without pulling:
#
#   deploy/images/make-base-images.sh
#   buildah bud --isolation chroot --pull=never --format docker -t meridian:dev .
#
# Needs root, debootstrap and buildah. Takes a few minutes (two debootstraps). Run it again to
# replace the images.
set -euo pipefail

suite=bookworm
# The first Debian mirror apt is configured with (deb822 or one-line format), unless given.
mirror="${MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?' \
  /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
  awk '{print $2}' | grep -v security | head -n1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
toolchain="${RUST_TOOLCHAIN_DIR:-$(rustc --print sysroot)}"

for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
[ -x "$toolchain/bin/cargo" ] || { echo "error: no cargo in $toolchain/bin" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Makes an image named $1 from the root filesystem in $2, with the environment in "${@:3}".
commit_rootfs() {
  local name="$1" root="$2"
  shift 2
  # Leave out what a slim image leaves out: package lists, caches, docs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/*
  tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
  local ctr
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
  local env=()
  for e in "$@"; do env+=(--env "$e"); done
  buildah config "${env[@]}" --cmd bash --label "org.opencontainers.image.description=local stand-in made by deploy/images/make-base-images.sh" "$ctr"
  buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  rm -f "$work/rootfs.tar"
  echo "made $name"
}

path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

echo "debootstrap $suite (runtime) from $mirror"
debootstrap --variant=minbase "$suite" "$work/slim" "$mirror" >"$work/slim.log" 2>&1 ||
  { tail -n 20 "$work/slim.log" >&2; exit 1; }
commit_rootfs docker.io/library/debian:bookworm-slim "$work/slim" "PATH=$path"
rm -rf "$work/slim"

echo "debootstrap $suite (build) from $mirror"
debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates "$suite" "$work/rust" \
  "$mirror" >"$work/rust.log" 2>&1 || { tail -n 20 "$work/rust.log" >&2; exit 1; }
# Trust what this machine trusts: behind a TLS-inspecting proxy, cargo needs the proxy's CA to
# fetch crates during the build.
cp /etc/ssl/certs/ca-certificates.crt "$work/rust/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$work/rust/usr/local/cargo"
# The toolchain's programs and libraries only (no docs, no sources).
cp -a "$toolchain/bin" "$toolchain/lib" "$work/rust/usr/local/cargo/"
commit_rootfs docker.io/library/rust:1-slim-bookworm "$work/rust" \
  "PATH=/usr/local/cargo/bin:$path" CARGO_HOME=/usr/local/cargo
