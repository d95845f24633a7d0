#!/usr/bin/env bash
# Build a Debian package of corelb with dpkg-deb (Debian's own tool, present on
# every Debian system): the release binary as /usr/bin/corelb, the systemd unit
# (scripts/corelb.service, pointed at /usr/bin), the example configuration as
# /etc/corelb/corelb.toml and the logrotate file as /etc/logrotate.d/corelb (both
# conffiles: an upgrade keeps the operator's edits), and the licence. The unit is
# installed, not started: edit the configuration first, then
# `systemctl enable --now corelb`.
#
# Usage: scripts/package-deb.sh [--install]
#        --install: then dpkg -i it, and show `corelb --version` and
#        `systemd-analyze verify` / `security` on the installed unit.
# Prints the package's path (target/debian/corelb_VERSION_ARCH.deb).
set -euo pipefail
cd "$(dirname "$0")/.."
install=0
case "${1:-}" in
  "") ;;
  --install) install=1 ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "package-deb.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac
command -v dpkg-deb >/dev/null || { echo "package-deb.sh: dpkg-deb is missing (a Debian system has it: apt-get install dpkg)" >&2; exit 2; }

cargo build --release --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -D -m 755 target/release/corelb "$root/usr/bin/corelb"
strip "$root/usr/bin/corelb" 2>/dev/null || true
sed 's|/usr/local/bin/corelb|/usr/bin/corelb|g' scripts/corelb.service >"$root/corelb.service"
install -D -m 644 "$root/corelb.service" "$root/lib/systemd/system/corelb.service"
rm "$root/corelb.service"
install -D -m 644 scripts/corelb.toml "$root/etc/corelb/corelb.toml"
install -D -m 644 scripts/corelb.logrotate "$root/etc/logrotate.d/corelb"
install -D -m 644 LICENSE "$root/usr/share/doc/corelb/copyright"
install -D -m 644 README.md "$root/usr/share/doc/corelb/README.md"

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: corelb
Version: $version
Architecture: $arch
Maintainer: the corelb authors <corelb@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34)
Section: net
Priority: optional
Homepage: https://github.com/corelb/corelb
Description: thread-per-core HTTP/1.1 load balancer
 corelb balances HTTP/1.1 over backends with one event loop per core, strict
 HTTP parsing, TLS (rustls), the PROXY protocol and backends from DNS. This
 package installs the binary, a hardened systemd unit (not started), an
 example configuration in /etc/corelb and a logrotate file.
EOF
printf '/etc/corelb/corelb.toml\n/etc/logrotate.d/corelb\n' >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
# Let systemd see the unit; starting it is the operator's call once the
# configuration names real backends.
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
EOF
chmod 755 "$root/DEBIAN/postinst"
cat >"$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Removal stops and disables the service first: nothing runs a deleted binary.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop corelb.service >/dev/null 2>&1 || true
  systemctl disable corelb.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
chmod 755 "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p target/debian
deb="target/debian/corelb_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"

if [ $install -eq 1 ]; then
  dpkg -i "$deb" >/dev/null
  corelb --version
  systemd-analyze verify /lib/systemd/system/corelb.service && echo "systemd-analyze verify: ok"
  systemd-analyze security --offline=true /lib/systemd/system/corelb.service | tail -1
fi
