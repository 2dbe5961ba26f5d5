#!/usr/bin/env bash
# Build the hecated .deb from a clean copy of the source tree.
#
#   packaging/debian/build.sh [--out DIR] [--from-head] [--no-lintian]
#
# The tree is assembled in a temporary directory (the files git knows about,
# minus anything ignored, or exactly HEAD with --from-head), packaging/debian
# becomes its debian/ directory, and debian/changelog is written from
# hecated/__init__.py's __version__, the one place the version lives. Then
# `dpkg-buildpackage -us -uc -b` runs with a PATH that puts Debian's own
# /usr/bin/python3 first (never a pyenv or venv python) and a scrubbed
# environment, and lintian checks the result: any error fails the build.
# The .deb, .buildinfo and .changes land in DIR (default: dist/).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/dist"
from_head=0
lintian=1
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$2; shift 2 ;;
	--out=*) out=${1#--out=}; shift ;;
	--from-head) from_head=1; shift ;;
	--no-lintian) lintian=0; shift ;;
	-h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Debian's python, whatever is first on the caller's PATH.
SYSPATH=/usr/sbin:/usr/bin:/sbin:/bin

work=$(mktemp -d /tmp/hecated-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
head_arg=()
[ "$from_head" = 1 ] && head_arg=(--from-head)
version=$("$repo/packaging/source-tree.sh" "$work/tree" "${head_arg[@]}")
src="$work/hecated-$version"
mv "$work/tree" "$src"

cd "$repo"
rm -rf "$src/debian"
cp -a "$src/packaging/debian" "$src/debian"
rm -f "$src/debian/build.sh"

# The changelog is generated so that the version has exactly one home.
maintainer=$(sed -n 's/^Maintainer: //p' "$src/debian/control")
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
cat >"$src/debian/changelog" <<EOF
hecated ($version) unstable; urgency=medium

  * Release $version; entry written by packaging/debian/build.sh.

 -- $maintainer  $(LC_ALL=C date -u -R -d "@$epoch")
EOF

cd "$src"
env -i PATH="$SYSPATH" HOME="$work" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
	SOURCE_DATE_EPOCH="$epoch" DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-}" \
	DEB_BUILD_PROFILES="${DEB_BUILD_PROFILES:-}" \
	dpkg-buildpackage -us -uc -b

changes=$(ls "$work"/hecated_"$version"_*.changes)
if [ "$lintian" = 1 ]; then
	echo "lintian $(basename "$changes"):"
	env -i PATH="$SYSPATH" HOME="$work" LANG=C.UTF-8 \
		lintian --fail-on error --info "$changes"
fi
cp "$work"/hecated_"$version"_*.deb "$work"/hecated_"$version"_*.buildinfo "$changes" "$out"/
echo "built: $(ls "$out"/hecated_"$version"_*.deb)"
