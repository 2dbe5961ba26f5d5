#!/usr/bin/env bash
# Build the hecated RPM with Debian's rpmbuild (package `rpm`).
#
#   packaging/rpm/build.sh [--out DIR] [--from-head]
#
# Makes Source0 (hecated-VERSION.tar.gz) from a clean tree, then runs
# `rpmbuild -ba` on hecated.spec in a temporary _topdir with Debian's
# /usr/bin/python3 first on PATH. Debian has no Fedora macro packages, so
# debian-host.macros stands in for them, and --nodeps skips the BuildRequires
# check (rpm's database is empty on Debian; Debian's packages provide them).
# The .rpm and .src.rpm land in DIR (default: dist/).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/dist"
head_arg=()
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$2; shift 2 ;;
	--out=*) out=${1#--out=}; shift ;;
	--from-head) head_arg=(--from-head); shift ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d /tmp/hecated-rpm.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
version=$("$repo/packaging/source-tree.sh" "$work/tree" "${head_arg[@]}")
spec_version=$(sed -n 's/^Version:[[:space:]]*//p' "$here/hecated.spec")
if [ "$spec_version" != "$version" ]; then
	echo "build.sh: hecated.spec says $spec_version, hecated/__init__.py says $version" >&2
	exit 1
fi
mv "$work/tree" "$work/hecated-$version"
tar -C "$work" -czf "$work/SOURCES/hecated-$version.tar.gz" "hecated-$version"
cp "$here/hecated.spec" "$work/SPECS/"

env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LANG=C.UTF-8 \
	rpmbuild -ba --nodeps --define "_topdir $work" --load "$here/debian-host.macros" \
	"$work/SPECS/hecated.spec"

cp "$work"/RPMS/noarch/hecated-"$version"-*.noarch.rpm "$work"/SRPMS/hecated-"$version"-*.src.rpm "$out"/
echo "built: $(ls "$out"/hecated-"$version"-*.noarch.rpm)"
