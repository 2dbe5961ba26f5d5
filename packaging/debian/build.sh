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
version=$(PATH=$SYSPATH python3 -c '
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
        print(node.value.value)
        break
else:
    sys.exit("no __version__ in " + sys.argv[1])
' "$repo/hecated/__init__.py")
case "$version" in
[0-9]*) ;;
*) echo "build.sh: version '$version' does not start with a digit" >&2; exit 1 ;;
esac

work=$(mktemp -d /tmp/hecated-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/hecated-$version"
mkdir -p "$src"

cd "$repo"
if [ "$from_head" = 1 ]; then
	git archive --format=tar HEAD | tar -x -C "$src"
else
	# Tracked and new-but-not-ignored files as they are in the work tree.
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
		tar --null -T - -cf - | tar -x -C "$src"
fi
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
