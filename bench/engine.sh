#!/usr/bin/env bash
# Measure cairn on a generated tree: first backup, unchanged re-backup, restore.
#   bench/engine.sh SIZE_MIB [WORKDIR]
# Prints wall seconds, MB/s, peak RSS and repository size. Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?size in MiB}
WORK=${2:-bench/work}
cargo build --release --locked -p cairn-agent >/dev/null
CAIRN=$PWD/target/release/cairn
mkdir -p "$WORK"
SRC="$WORK/src-$SIZE"
[ -d "$SRC" ] || python3 bench/gentree.py "$SRC" "$SIZE" 1
export CAIRN_REPOSITORY="$WORK/repo-$SIZE" CAIRN_PASSWORD=bench
rm -rf "$CAIRN_REPOSITORY" "$WORK/restore-$SIZE"
BYTES=$(du -sb "$SRC" | cut -f1)
"$CAIRN" init >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.txt" "$@" >/dev/null
  read -r wall rss user sys < "$WORK/time.txt"
  awk -v n="$name" -v w="$wall" -v r="$rss" -v u="$user" -v s="$sys" -v b="$BYTES" \
    'BEGIN{printf "%-22s %8.2f s %9.1f MB/s %8.1f MiB RSS %7.2f s CPU\n", n, w, (w>0 ? b/1e6/w : 0), r/1024, u+s}'
}
echo "input: $((BYTES >> 20)) MiB in $(find "$SRC" -type f | wc -l) files; $(nproc) CPUs"
measure "backup (first)" "$CAIRN" backup "$SRC"
measure "backup (unchanged)" "$CAIRN" backup "$SRC"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
measure "restore" "$CAIRN" restore latest --target "$WORK/restore-$SIZE"
REPO=$(du -sb "$CAIRN_REPOSITORY" | cut -f1)
echo "repository: $((REPO >> 20)) MiB ($(awk -v r="$REPO" -v b="$BYTES" 'BEGIN{printf "%.3f", r/b}') x input)"
diff -r "$SRC" "$WORK/restore-$SIZE/$(realpath "$SRC" | sed 's|^/||')" && echo "restore verified"
rm -rf "$WORK/restore-$SIZE"
