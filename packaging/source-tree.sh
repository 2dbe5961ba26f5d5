#!/usr/bin/env bash
# Copy a clean source tree of hecated into DEST and print its version.
#
#   packaging/source-tree.sh DEST [--from-head]
#
# Clean means: the files git knows about plus new files that are not ignored,
# as they are in the work tree (no .venv, dist/, caches); with --from-head,
# exactly the committed HEAD. Shared by the .deb and RPM builds so both
# package the same files. The version is read from hecated/__init__.py, the
# one place it lives, with Debian's /usr/bin/python3.
set -euo pipefail

dest=${1:?usage: source-tree.sh DEST [--from-head]}
from_head=0
[ "${2:-}" = --from-head ] && from_head=1
repo=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$dest"
cd "$repo"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# An unpacked tarball, not a checkout: everything but build and tool droppings.
	[ "$from_head" = 1 ] && { echo "source-tree.sh: --from-head needs a git checkout" >&2; exit 1; }
	tar --exclude=./.venv --exclude=./dist --exclude=./build --exclude='*.egg-info' \
		--exclude='__pycache__' --exclude=./.pytest_cache --exclude=./.ruff_cache \
		--exclude=./.hypothesis -cf - . | tar -x -C "$dest"
elif [ "$from_head" = 1 ]; then
	git archive --format=tar HEAD | tar -x -C "$dest"
else
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
		tar --null -T - -cf - | tar -x -C "$dest"
fi

PATH=/usr/bin:/bin python3 -c '
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
        version = node.value.value
        break
else:
    sys.exit("no __version__ in " + sys.argv[1])
if not version[:1].isdigit():
    sys.exit(f"version {version!r} does not start with a digit")
print(version)
' "$dest/hecated/__init__.py"
