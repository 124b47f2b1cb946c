#!/usr/bin/env bash
# Instructions the exporter executes per GET /metrics, counted by valgrind's callgrind: a
# deterministic figure that a shared, noisy machine does not blur as it blurs requests per
# second, to compare one build against another. On plain HTTP, gzip and TLS (asking for gzip),
# each over one keep-alive connection: two runs of curl, of SHORT and LONG requests, and the
# difference of their counts divided by the difference of their requests, so that accepting
# the connection and the TLS handshake drop out.
#
#   bash benches/instructions.sh
#   SHORT=100 LONG=1100 PATHS="plain gzip" bash benches/instructions.sh   # quicker
#   BIN=/path/to/other/sfb-exporter bash benches/instructions.sh     # another build
#
# Needs valgrind, curl and openssl. The exporter runs with its default flags against its
# built-in fake Graph (--demo), pinned to one CPU as in benches/scrape.sh, so that its runtime
# is single-threaded. Once a second of wall-clock time the process_* series are read and
# compressed again; at callgrind's pace that adds a few hundred instructions to each request,
# most on gzip, and varies by as much from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."

SHORT=${SHORT:-100}
LONG=${LONG:-2100}
BIN=${BIN:-}
PATHS=${PATHS:-plain gzip tls}
BASE_PORT=${BASE_PORT:-19175}

for tool in valgrind callgrind_control curl openssl; do
  command -v "$tool" >/dev/null || { echo "benches/instructions.sh: $tool is missing (Debian: apt-get install valgrind curl openssl)" >&2; exit 1; }
done

if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=./target/release/sfb-exporter
fi
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cpu=()
if command -v taskset >/dev/null; then cpu=(taskset -c "$(($(nproc) - 1))"); fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/server.key" -out "$work/server.crt" 2>/dev/null
printf 'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n' > "$work/web.yml"

# Under callgrind: counting from the start, zeroed before each measurement.
start() {
  "${cpu[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$1.%p" \
    "$BIN" --demo --log.level warn --web.listen-address "127.0.0.1:$2" "${@:3}" \
    2> "$work/valgrind.$1.log" &
  pids+=("$!")
}
wait_for() {
  for _ in $(seq 600); do
    curl -fsSk -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  curl -fsSk -o /dev/null "$1"
}

# The instructions of `count` requests over one connection; extra arguments go to curl.
measure() {
  local pid=$1 url=$2 count=$3
  shift 3
  for _ in $(seq "$count"); do echo "url = \"$url\""; done > "$work/urls"
  callgrind_control -z "$pid" > /dev/null 2>&1
  curl -fsSk "$@" --config "$work/urls" > /dev/null
  rm -f "$work"/callgrind.*."$pid".*
  callgrind_control -d "$pid" > /dev/null 2>&1
  local dump
  for _ in $(seq 100); do
    dump=$(ls "$work"/callgrind.*."$pid".* 2>/dev/null | head -1)
    [ -n "$dump" ] && grep -q '^totals:' "$dump" && break
    sleep 0.1
  done
  awk '/^totals:/ { print $2 }' "$dump"
}

plain_port=$BASE_PORT
tls_port=$((BASE_PORT + 1))
case " $PATHS " in *" plain "* | *" gzip "*)
  start plain "$plain_port"; plain_pid=${pids[-1]}
  wait_for "http://127.0.0.1:$plain_port/readyz" ;;
esac
case " $PATHS " in *" tls "*)
  start tls "$tls_port" --web.config.file "$work/web.yml"; tls_pid=${pids[-1]}
  wait_for "https://127.0.0.1:$tls_port/readyz" ;;
esac

echo "instructions per GET /metrics (callgrind; $SHORT and $LONG requests over one connection)"
for path in $PATHS; do
  case $path in
    plain) pid=$plain_pid url="http://127.0.0.1:$plain_port/metrics" extra=() ;;
    gzip) pid=$plain_pid url="http://127.0.0.1:$plain_port/metrics" extra=(-H 'Accept-Encoding: gzip') ;;
    # HTTP/1.1, as wrk (and Prometheus, unless told otherwise) speaks over TLS.
    tls) pid=$tls_pid url="https://127.0.0.1:$tls_port/metrics" extra=(--http1.1 -H 'Accept-Encoding: gzip') ;;
    *) echo "unknown path $path" >&2; exit 1 ;;
  esac
  # A first round warms the allocator and the caches of the snapshot's encodings.
  measure "$pid" "$url" "$SHORT" "${extra[@]}" > /dev/null
  short=$(measure "$pid" "$url" "$SHORT" "${extra[@]}")
  long=$(measure "$pid" "$url" "$LONG" "${extra[@]}")
  awk -v path="$path" -v s="$short" -v l="$long" -v n=$((LONG - SHORT)) \
    'BEGIN { printf "%-6s %8.0f\n", path, (l - s) / n }'
done
