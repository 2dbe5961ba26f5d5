#!/usr/bin/env bash
# Run packaging/arch/PKGBUILD through Debian's makepkg (package pacman-package-manager).
#
#   packaging/arch/build.sh [--out DIR]
#
# What this proves: the PKGBUILD's build(), check() and package() run and
# produce a package with the expected files and .PKGINFO. What it does not:
# Debian's python3 stands in for Arch's `python` (a `python` shim on PATH), so
# the module lands in Debian's /usr/lib/python3/dist-packages, not Arch's
# site-packages; dependencies are not checked (--nodeps: no Arch packages
# here). makepkg refuses to run as root, so as root it runs as `nobody`.
# The .pkg.tar.* lands in DIR (default: dist/).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/dist"
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$2; shift 2 ;;
	--out=*) out=${1#--out=}; shift ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d /tmp/hecated-arch.XXXXXX)
trap 'rm -rf "$work"' EXIT
version=$("$repo/packaging/source-tree.sh" "$work/hecated-src")
pkgver=$(sed -n 's/^pkgver=//p' "$here/PKGBUILD")
if [ "$pkgver" != "$version" ]; then
	echo "build.sh: PKGBUILD says $pkgver, hecated/__init__.py says $version" >&2
	exit 1
fi
mv "$work/hecated-src" "$work/hecated-$version"
tar -C "$work" -czf "$work/hecated-$version.tar.gz" "hecated-$version"
rm -rf "${work:?}/hecated-$version"
cp "$here/PKGBUILD" "$work/"
mkdir "$work/bin" "$work/pkg"
ln -s /usr/bin/python3 "$work/bin/python"

as=()
if [ "$(id -u)" = 0 ]; then
	chown -R nobody:nogroup "$work"
	as=(runuser -u nobody --)
fi
(cd "$work" && "${as[@]}" env -i PATH="$work/bin:/usr/bin:/bin" HOME="$work" LANG=C.UTF-8 \
	DEB_PYTHON_INSTALL_LAYOUT=deb_system BUILDDIR="$work/build" PKGDEST="$work/pkg" \
	SRCDEST="$work" makepkg --nodeps --noconfirm)
cp "$work"/pkg/hecated-"$version"-*.pkg.tar.* "$out"/
echo "built: $(ls "$out"/hecated-"$version"-*.pkg.tar.*)"
