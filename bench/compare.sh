#!/usr/bin/env bash
# Side by side on the same data: cairn, restic and Borg (whichever are
# installed; Debian: apt-get install restic borgbackup). Each tool with its
# defaults, encryption on: first backup, unchanged second backup, restore, and
# repository size. Page cache dropped before each timed step when possible.
#   bench/compare.sh SIZE_MIB [WORKDIR]
# Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?size in MiB}
WORK=$(realpath -m "${2:-bench/work}")
cargo build --release --locked -p cairn-agent >/dev/null
CAIRN=$PWD/target/release/cairn
mkdir -p "$WORK"
SRC="$WORK/src-$SIZE"
[ -d "$SRC" ] || python3 bench/gentree.py "$SRC" "$SIZE" 1
SRC=$(realpath "$SRC")
BYTES=$(du -sb "$SRC" | cut -f1)
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
measure() { # tool, step, command...
  local tool=$1 step=$2; shift 2
  drop
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/err.txt" || {
    echo "$tool $step failed:"; cat "$WORK/err.txt"; return 1; }
  read -r wall rss user sys < "$WORK/time.txt"
  awk -v t="$tool" -v s="$step" -v w="$wall" -v r="$rss" -v u="$user" -v y="$sys" -v b="$BYTES" \
    'BEGIN{printf "%-8s %-20s %8.2f s %8.1f MB/s %8.1f MiB RSS %8.2f CPU-s\n", t, s, w, (w>0 ? b/1e6/w : 0), r/1024, u+y}'
}
size() { echo "$1 repository: $(( $(du -sb "$2" | cut -f1) >> 20 )) MiB ($(awk -v r="$(du -sb "$2" | cut -f1)" -v b="$BYTES" 'BEGIN{printf "%.3f", r/b}') x input)"; }
verify() { diff -r "$SRC" "$1" >/dev/null && echo "$2 restore verified" || echo "$2 RESTORE DIFFERS"; }

echo "input: $((BYTES >> 20)) MiB in $(find "$SRC" -type f | wc -l) files; $(nproc) CPUs"

R="$WORK/cmp-cairn"; rm -rf "$R" "$WORK/out-cairn"
"$CAIRN" --repo "$R" init >/dev/null
measure cairn "backup (first)" "$CAIRN" --repo "$R" backup "$SRC"
measure cairn "backup (unchanged)" "$CAIRN" --repo "$R" backup "$SRC"
measure cairn restore "$CAIRN" --repo "$R" restore latest --target "$WORK/out-cairn"
size cairn "$R"; verify "$WORK/out-cairn$SRC" cairn; rm -rf "$WORK/out-cairn"

if command -v restic >/dev/null; then
  R="$WORK/cmp-restic"; rm -rf "$R" "$WORK/out-restic"
  restic -r "$R" init >/dev/null 2>&1
  measure restic "backup (first)" restic -r "$R" backup "$SRC"
  measure restic "backup (unchanged)" restic -r "$R" backup "$SRC"
  measure restic restore restic -r "$R" restore latest --target "$WORK/out-restic"
  size "restic $(restic version | cut -d' ' -f2)" "$R"; verify "$WORK/out-restic$SRC" restic; rm -rf "$WORK/out-restic"
fi

if command -v borg >/dev/null; then
  R="$WORK/cmp-borg"; rm -rf "$R" "$WORK/out-borg"
  borg init -e repokey-blake2 "$R" >/dev/null 2>&1
  measure borg "backup (first)" borg create "$R::one" "$SRC"
  measure borg "backup (unchanged)" borg create "$R::two" "$SRC"
  mkdir -p "$WORK/out-borg"
  measure borg restore sh -c "cd '$WORK/out-borg' && borg extract '$R::two'"
  size "borg $(borg --version | cut -d' ' -f2)" "$R"; verify "$WORK/out-borg$SRC" borg; rm -rf "$WORK/out-borg"
fi
