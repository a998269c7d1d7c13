#!/usr/bin/env bash
# Maintenance figures: a repository holding ROUNDS snapshots of a SIZE_MIB
# dataset that changes ~5 % between backups; then time and peak RSS of
# check, check --read-data, forget+prune (marking, default grace) and prune
# with --grace 0 (deleting), each followed by a check.
#   bench/maintenance.sh SIZE_MIB ROUNDS [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?size in MiB}
ROUNDS=${2:?number of snapshots}
WORK=${3:-bench/work}
cargo build --release --locked -p cairn-agent >/dev/null
CAIRN=$PWD/target/release/cairn
mkdir -p "$WORK"
BASE="$WORK/src-$SIZE"
[ -d "$BASE" ] || python3 bench/gentree.py "$BASE" "$SIZE" 1
SRC="$WORK/maint-src-$SIZE"
rm -rf "$SRC"; cp -a "$BASE" "$SRC"
export CAIRN_REPOSITORY="$WORK/maint-repo-$SIZE" CAIRN_PASSWORD=bench
rm -rf "$CAIRN_REPOSITORY"
"$CAIRN" init >/dev/null

measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.txt" "$@" >"$WORK/out.txt"
  read -r wall rss user sys < "$WORK/time.txt"
  printf "%-34s %8.2f s %8.1f MiB RSS %8.2f s CPU\n" "$name" "$wall" "$(echo "$rss/1024" | bc -l)" "$(echo "$user+$sys" | bc -l)"
}
for r in $(seq 1 "$ROUNDS"); do
  [ "$r" -gt 1 ] && python3 bench/mutate.py "$SRC" "$r" 5
  "$CAIRN" backup "$SRC" >/dev/null
done
repo_mib() { echo $(( $(du -sb "$CAIRN_REPOSITORY" | cut -f1) >> 20 )); }
echo "input: $(( $(du -sb "$SRC" | cut -f1) >> 20 )) MiB, $ROUNDS snapshots, repository $(repo_mib) MiB; $(nproc) CPUs"
"$CAIRN" stats --json > "$WORK/stats.json"; echo "stats: $(cat "$WORK/stats.json")"
measure "check" "$CAIRN" check
measure "check --read-data" "$CAIRN" check --read-data
measure "forget --keep-last 10 (no prune)" "$CAIRN" forget --keep-last 10
measure "prune (mark, grace 24h)" "$CAIRN" prune
tail -4 "$WORK/out.txt"
measure "prune --grace 0 (delete)" "$CAIRN" prune --grace 0
tail -4 "$WORK/out.txt"
echo "repository after prune: $(repo_mib) MiB"
measure "check (after prune)" "$CAIRN" check
grep -q "no errors were found" "$WORK/out.txt" && echo "check: no errors"
