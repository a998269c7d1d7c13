#!/usr/bin/env bash
# Measure cairn against a local Garage S3 server on loopback:
#   bench/s3.sh SIZE_MIB [CONCURRENCY...]      (default concurrencies: 1 4 16)
# For each upload concurrency: first backup, unchanged backup, restore
# (verified), with wall time, MB/s, peak RSS and S3 request counts.
# Needs `garage` (cargo install garage --version 2.5.0 --locked). Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?size in MiB}; shift
CONC=("$@"); [ ${#CONC[@]} -gt 0 ] || CONC=(1 4 16)
WORK=${BENCH_WORK:-bench/work}
cargo build --release --locked -p cairn-agent >/dev/null
CAIRN=$PWD/target/release/cairn
mkdir -p "$WORK"; WORK=$(realpath "$WORK")
SRC="$WORK/src-$SIZE"
[ -d "$SRC" ] || python3 bench/gentree.py "$SRC" "$SIZE" 1
BYTES=$(du -sb "$SRC" | cut -f1)

# --- a throwaway Garage ---
G="$WORK/garage"; rm -rf "$G"; mkdir -p "$G/meta" "$G/data"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3P=$(port); RPCP=$(port); ADMP=$(port)
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
cat > "$G/garage.toml" <<TOML
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "lmdb"
replication_factor = 1
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "127.0.0.1:$RPCP"
rpc_public_addr = "127.0.0.1:$RPCP"
rpc_secret = "$(hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3P"
[admin]
api_bind_addr = "127.0.0.1:$ADMP"
TOML
export AWS_ACCESS_KEY_ID="GK$(hex 12)" AWS_SECRET_ACCESS_KEY="$(hex 32)" AWS_REGION=garage AWS_EC2_METADATA_DISABLED=true
GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY GARAGE_DEFAULT_BUCKET=bench \
  RUST_LOG=garage=warn garage -c "$G/garage.toml" server --single-node --default-bucket >"$G/log" 2>&1 &
GPID=$!
trap 'kill $GPID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do garage -c "$G/garage.toml" bucket info bench >/dev/null 2>&1 && break; sleep 0.2; done

export CAIRN_PASSWORD=bench CAIRN_CACHE_DIR="$WORK/cache" CAIRN_LOG=cairn=info
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/err.txt" || { cat "$WORK/err.txt"; exit 1; }
  read -r wall rss user sys < "$WORK/time.txt"
  local req; req=$(grep -o 'S3 requests: .*' "$WORK/err.txt" | tail -1)
  awk -v n="$name" -v w="$wall" -v r="$rss" -v u="$user" -v s="$sys" -v b="$BYTES" -v q="$req" \
    'BEGIN{printf "%-26s %7.2f s %8.1f MB/s %7.1f MiB RSS %6.2f s CPU  %s\n", n, w, (w>0 ? b/1e6/w : 0), r/1024, u+s, q}'
}
echo "input: $((BYTES >> 20)) MiB in $(find "$SRC" -type f | wc -l) files; Garage on 127.0.0.1:$S3P"
for c in "${CONC[@]}"; do
  export CAIRN_REPOSITORY="s3:http://127.0.0.1:$S3P/bench/c$c" CAIRN_S3_CONCURRENCY=$c
  rm -rf "$CAIRN_CACHE_DIR" "$WORK/restore"
  "$CAIRN" init >/dev/null 2>&1
  measure "backup, concurrency $c" "$CAIRN" backup "$SRC"
  measure "unchanged, concurrency $c" "$CAIRN" backup "$SRC"
  measure "restore, concurrency $c" "$CAIRN" restore "latest:$SRC" --target "$WORK/restore"
  diff -r "$SRC" "$WORK/restore" >/dev/null && echo "  restore verified"
done
rm -rf "$WORK/restore"
