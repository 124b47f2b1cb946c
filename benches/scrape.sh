#!/usr/bin/env bash
# Scrape benchmark: the exporter's /metrics side by side with nginx serving the byte-identical
# body as a static file, in alternating wrk rounds on loopback, with the exporter's peak RSS.
#
#   bash benches/scrape.sh                 # 3 rounds of 10 s each, 64 connections
#   ROUNDS=5 DURATION=20s bash benches/scrape.sh
#
# Needs wrk, nginx (Debian: wrk, nginx-light) and curl. Targets on a 2-core machine: at least
# 1.0x nginx's requests per second, p99 under 2 ms at 64 connections, RSS under 16 MiB.
# A benchmark, not a test: it reports against the targets and exits 0 unless something broke.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
# One core for the load generator, the other for the server under test (nginx or the
# exporter, each alone on it), so neither measurement is decided by how the scheduler
# shares two cores among four busy threads. PIN=0 turns pinning off.
PIN=${PIN:-1}
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  client_cpu=(taskset -c 0)
  server_cpu=(taskset -c 1)
  # One core, one worker each: nginx gets worker_processes 1, the exporter one runtime
  # thread, so neither time-slices two workers on the core it has.
  exporter_env=(TOKIO_WORKER_THREADS=1)
else
  client_cpu=()
  server_cpu=()
  exporter_env=()
fi
EXPORTER_PORT=${EXPORTER_PORT:-19165}
NGINX_PORT=${NGINX_PORT:-19166}

for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "benches/scrape.sh: $tool is missing (Debian: apt-get install wrk nginx-light curl)" >&2; exit 1; }
done

cargo build --release --quiet
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The exporter against its built-in fake Graph (--demo): the real pipeline, on loopback.
"${server_cpu[@]}" env ${exporter_env[@]+"${exporter_env[@]}"} ./target/release/sfb-exporter --demo --log.level warn --web.listen-address "127.0.0.1:$EXPORTER_PORT" &
exporter_pid=$!
pids+=("$exporter_pid")
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$EXPORTER_PORT/readyz" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$EXPORTER_PORT/readyz"

mkdir -p "$work/www"
curl -fsS "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$work/www/metrics"
cat > "$work/nginx.conf" <<NGINX
worker_processes $([ "${#server_cpu[@]}" -gt 0 ] && echo 1 || echo auto);
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx at its best for one small file: no open/stat/close per request.
  open_file_cache max=16 inactive=60s;
  open_file_cache_valid 60s;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path $work;
  proxy_temp_path $work;
  fastcgi_temp_path $work;
  uwsgi_temp_path $work;
  scgi_temp_path $work;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /metrics {
      root $work/www;
      default_type "text/plain; version=0.0.4; charset=utf-8";
    }
  }
}
NGINX
"${server_cpu[@]}" nginx -c "$work/nginx.conf" &
pids+=("$!")
for _ in $(seq 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/metrics" 2>/dev/null && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$NGINX_PORT/metrics" -o "$work/nginx-body"
curl -fsS "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$work/exporter-body"
cmp -s "$work/nginx-body" "$work/exporter-body" || { echo "the two bodies differ" >&2; exit 1; }
bytes=$(wc -c < "$work/exporter-body")

# Prints "requests_per_second p99_ms" for one wrk round.
round() {
  "${client_cpu[@]}" wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$1" > "$work/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec:/ { rps = $2 }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx|Socket errors/ { errors = errors " " $0 }
    END { if (errors != "") { print "errors:" errors > "/dev/stderr" } printf "%.0f %.3f\n", rps, p99 }
  ' "$work/wrk.out"
}

echo "body: $bytes bytes; wrk: $THREADS thread(s), $CONNECTIONS connections, $DURATION per round, $ROUNDS rounds each; pinned: $([ "${#server_cpu[@]}" -gt 0 ] && echo "wrk on CPU 0, server on CPU 1" || echo no)"
printf '%-6s %-9s %12s %9s\n' round server req/s p99_ms
exporter_results=()
nginx_results=()
run_exporter() {
  result=$(round "http://127.0.0.1:$EXPORTER_PORT/metrics")
  exporter_results+=("$result")
  printf '%-6s %-9s %12s %9s\n' "$1" exporter $result
}
run_nginx() {
  result=$(round "http://127.0.0.1:$NGINX_PORT/metrics")
  nginx_results+=("$result")
  printf '%-6s %-9s %12s %9s\n' "$1" nginx $result
}
# Alternating rounds, and which server goes first alternates too.
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run_exporter "$r"; run_nginx "$r"; else run_nginx "$r"; run_exporter "$r"; fi
done
rss_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$exporter_pid/status")

# Medians across rounds, then the verdict against the targets.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
exporter_rps=$(printf '%s\n' "${exporter_results[@]}" | cut -d' ' -f1 | median)
nginx_rps=$(printf '%s\n' "${nginx_results[@]}" | cut -d' ' -f1 | median)
exporter_p99=$(printf '%s\n' "${exporter_results[@]}" | cut -d' ' -f2 | median)
nginx_p99=$(printf '%s\n' "${nginx_results[@]}" | cut -d' ' -f2 | median)
awk -v e="$exporter_rps" -v n="$nginx_rps" -v p="$exporter_p99" -v np="$nginx_p99" -v rss="$rss_kib" 'BEGIN {
  ratio = e / n
  printf "\nmedian req/s: exporter %.0f, nginx %.0f, ratio %.3f (target >= 1.000) %s\n", e, n, ratio, (ratio >= 1.0 ? "ok" : "MISSED")
  printf "median p99:   exporter %.3f ms, nginx %.3f ms (target < 2 ms) %s\n", p, np, (p < 2.0 ? "ok" : "MISSED")
  printf "exporter peak RSS: %.1f MiB (target < 16 MiB) %s\n", rss / 1024, (rss < 16 * 1024 ? "ok" : "MISSED")
}'
