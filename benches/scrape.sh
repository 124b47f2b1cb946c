#!/usr/bin/env bash
# Scrape benchmark on the three paths Prometheus uses: plain HTTP, gzip (Prometheus asks for it
# on every scrape) and TLS. On each, the exporter's /metrics against nginx serving the same
# bytes (the static file; gzip_static with the exporter's own compressed body; TLS with the same
# certificate) and, on plain and gzip, a client_golang peer serving the same families, in
# alternating wrk rounds on loopback, with the exporter's peak RSS and each server's user and
# kernel CPU time per request (utime and stime of /proc/<pid>/stat, the server's processes
# summed, over the round, divided by the requests wrk completed).
#
#   bash benches/scrape.sh                 # 3 rounds of 10 s per server and path, 64 connections
#   ROUNDS=5 DURATION=20s bash benches/scrape.sh
#   PATHS="plain gzip" GOLANG=0 bash benches/scrape.sh
#   BIN=/path/to/other/sfb-exporter bash benches/scrape.sh     # another build of the exporter
#
# Needs wrk, nginx, curl, openssl and pgrep (Debian: wrk nginx-light curl openssl procps); the
# client_golang peer needs golang-go and golang-github-prometheus-client-golang-dev and is
# skipped without them (GOLANG=0 skips it too). Targets on a 2-core machine, on every path: at
# least 1.0x nginx's requests per second, p99 under 2 ms at 64 connections, RSS under 16 MiB.
# A benchmark, not a test: it reports against the targets and exits 0 unless something broke.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PATHS=${PATHS:-plain gzip tls}
GOLANG=${GOLANG:-1}
# One core for the load generator, the other for the server under test, each server pinned
# from exec so that it sizes its workers to the one core it has (the exporter runs a
# single-threaded runtime there, the Go peer GOMAXPROCS=1, nginx one worker). PIN=0 turns
# pinning off.
PIN=${PIN:-1}
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  client_cpu=(taskset -c 0)
  server_cpu=(taskset -c 1)
else
  client_cpu=()
  server_cpu=()
fi
BASE_PORT=${BASE_PORT:-19165}
EXPORTER_PORT=$BASE_PORT
EXPORTER_TLS_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
NGINX_TLS_PORT=$((BASE_PORT + 3))
GOLANG_PORT=$((BASE_PORT + 4))

for tool in wrk nginx curl openssl pgrep; do
  command -v "$tool" >/dev/null || { echo "benches/scrape.sh: $tool is missing (Debian: apt-get install wrk nginx-light curl openssl procps)" >&2; exit 1; }
done

BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=./target/release/sfb-exporter
fi
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() {
  for _ in $(seq 100); do
    curl -fsSk -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  curl -fsSk -o /dev/null "$1"
}

# One certificate for both TLS servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/server.key" -out "$work/server.crt" 2>/dev/null
printf 'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n' > "$work/web.yml"

# The exporter against its built-in fake Graph (--demo): the real pipeline, on loopback. One
# instance on plain HTTP, one on TLS; only the one being measured is busy.
start_exporter() {
  "${server_cpu[@]}" "$BIN" --demo --log.level warn --web.listen-address "127.0.0.1:$1" "${@:2}" &
  pids+=("$!")
}
start_exporter "$EXPORTER_PORT"
exporter_pid=${pids[-1]}
start_exporter "$EXPORTER_TLS_PORT" --web.config.file "$work/web.yml"
exporter_tls_pid=${pids[-1]}
wait_for "http://127.0.0.1:$EXPORTER_PORT/readyz"
wait_for "https://127.0.0.1:$EXPORTER_TLS_PORT/readyz"

# nginx serves what the exporter served: the body, and its gzip body for gzip_static.
mkdir -p "$work/www"
curl -fsS "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$work/www/metrics"
curl -fsS -H 'Accept-Encoding: gzip' "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$work/www/metrics.gz"
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
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    ssl_certificate $work/server.crt;
    ssl_certificate_key $work/server.key;
    location = /metrics {
      root $work/www;
      gzip_static on;
      default_type "text/plain; version=0.0.4; charset=utf-8";
    }
  }
}
NGINX
"${server_cpu[@]}" nginx -c "$work/nginx.conf" &
pids+=("$!")
nginx_pid=${pids[-1]}
wait_for "http://127.0.0.1:$NGINX_PORT/metrics"

# The bodies must match. The exporter's process_* series change between scrapes, so they are
# compared without them.
families() { grep -v 'process_' "$1"; }
curl -fsS "http://127.0.0.1:$NGINX_PORT/metrics" -o "$work/nginx-body"
curl -fsS "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$work/exporter-body"
cmp -s <(families "$work/nginx-body") <(families "$work/exporter-body") || { echo "the plain bodies differ" >&2; exit 1; }
curl -fsS -H 'Accept-Encoding: gzip' "http://127.0.0.1:$NGINX_PORT/metrics" | gzip -dc > "$work/nginx-gunzipped"
cmp -s "$work/nginx-gunzipped" "$work/www/metrics" || { echo "nginx does not serve the gzip body" >&2; exit 1; }
curl -fsSk "https://127.0.0.1:$NGINX_TLS_PORT/metrics" -o "$work/nginx-tls-body"
curl -fsSk "https://127.0.0.1:$EXPORTER_TLS_PORT/metrics" -o "$work/exporter-tls-body"
# The TLS instance is another process: its refresh times and durations differ, nothing else.
untimed() { families "$1" | grep -Ev '_(timestamp|duration)_seconds\{'; }
cmp -s <(untimed "$work/nginx-tls-body") <(untimed "$work/exporter-tls-body") || { echo "the TLS bodies differ" >&2; exit 1; }

# The client_golang peer: promhttp serving the same families (parsed once from the exporter's
# body), encoding and compressing per scrape as every client_golang exporter does. Built from
# Debian's Go packages in GOPATH mode, without the network.
golang=0
if [ "$GOLANG" = 1 ] && command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/prometheus/client_golang ]; then
  mkdir -p "$work/peer"
  cat > "$work/peer/main.go" <<'GO'
package main

import (
	"net/http"
	"os"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

func main() {
	file, err := os.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	var parser expfmt.TextParser
	parsed, err := parser.TextToMetricFamilies(file)
	if err != nil {
		panic(err)
	}
	names := make([]string, 0, len(parsed))
	for name := range parsed {
		names = append(names, name)
	}
	sort.Strings(names)
	families := make([]*dto.MetricFamily, 0, len(names))
	for _, name := range names {
		families = append(families, parsed[name])
	}
	gatherer := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return families, nil })
	http.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	panic(http.ListenAndServe(os.Args[2], nil))
}
GO
  families "$work/www/metrics" > "$work/peer/metrics"
  if (cd "$work/peer" && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$work/gocache" GOFLAGS= go build -o peer main.go) 2> "$work/go-build.log"; then
    "${server_cpu[@]}" "$work/peer/peer" "$work/peer/metrics" "127.0.0.1:$GOLANG_PORT" &
    pids+=("$!")
    golang_pid=${pids[-1]}
    wait_for "http://127.0.0.1:$GOLANG_PORT/metrics"
    golang=1
  else
    echo "client_golang peer did not build, skipping it:" >&2
    cat "$work/go-build.log" >&2
  fi
else
  echo "client_golang peer skipped (GOLANG=0, or golang-go / golang-github-prometheus-client-golang-dev missing)" >&2
fi

# "user system": the clock ticks of CPU time a process and its children (nginx's worker) have
# used so far, in user space and in the kernel.
cpu_ticks() {
  local pid
  for pid in "$1" $(pgrep -P "$1"); do
    # Fields from the third on, after the command name (which may hold spaces).
    sed 's/^.*) //' "/proc/$pid/stat"
  done | awk '{ user += $12; kernel += $13 } END { print user + 0, kernel + 0 }'
}
clock_ticks=$(getconf CLK_TCK)

# Prints "requests_per_second p99_ms user_us kernel_us" for one wrk round against the server
# whose process is `pid`, CPU time per request in microseconds; the other arguments go to wrk.
round() {
  local pid=$1
  shift
  local before after
  before=$(cpu_ticks "$pid")
  "${client_cpu[@]}" wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$@" > "$work/wrk.out"
  after=$(cpu_ticks "$pid")
  awk -v before="$before" -v after="$after" -v hz="$clock_ticks" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec:/ { rps = $2 }
    $2 == "requests" && $3 == "in" { requests = $1 }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx|Socket errors/ { errors = errors " " $0 }
    END {
      if (errors != "") { print "errors:" errors > "/dev/stderr" }
      split(before, b, " "); split(after, a, " ")
      per = requests > 0 ? 1e6 / hz / requests : 0
      printf "%.0f %.3f %.2f %.2f\n", rps, p99, (a[1] - b[1]) * per, (a[2] - b[2]) * per
    }
  ' "$work/wrk.out"
}

# The process of one server on one path.
server_pid() {
  case "$1/$2" in
    exporter/tls) echo "$exporter_tls_pid" ;;
    exporter/*) echo "$exporter_pid" ;;
    nginx/*) echo "$nginx_pid" ;;
    golang/*) echo "${golang_pid:-}" ;;
  esac
}

# The URL and wrk arguments of one server on one path; empty when it does not serve that path.
target() {
  local server=$1 path=$2
  local gzip=(-H 'Accept-Encoding: gzip')
  case "$server/$path" in
    exporter/plain) echo "http://127.0.0.1:$EXPORTER_PORT/metrics" ;;
    exporter/gzip) echo "http://127.0.0.1:$EXPORTER_PORT/metrics ${gzip[*]}" ;;
    exporter/tls) echo "https://127.0.0.1:$EXPORTER_TLS_PORT/metrics ${gzip[*]}" ;;
    nginx/plain) echo "http://127.0.0.1:$NGINX_PORT/metrics" ;;
    nginx/gzip) echo "http://127.0.0.1:$NGINX_PORT/metrics ${gzip[*]}" ;;
    nginx/tls) echo "https://127.0.0.1:$NGINX_TLS_PORT/metrics ${gzip[*]}" ;;
    golang/plain) [ "$golang" = 1 ] && echo "http://127.0.0.1:$GOLANG_PORT/metrics" ;;
    golang/gzip) [ "$golang" = 1 ] && echo "http://127.0.0.1:$GOLANG_PORT/metrics ${gzip[*]}" ;;
  esac
  return 0
}

servers=(exporter nginx golang)
echo "body: $(wc -c < "$work/www/metrics") bytes plain, $(wc -c < "$work/www/metrics.gz") gzip; wrk: $THREADS thread(s), $CONNECTIONS connections, $DURATION per round, $ROUNDS rounds; pinned: $([ "${#server_cpu[@]}" -gt 0 ] && echo "wrk on CPU 0, each server on CPU 1" || echo no)"
echo "TLS rounds ask for gzip, as Prometheus does."
echo "user_us and kernel_us: CPU time per request, in microseconds, of the server's processes."
printf '%-6s %-6s %-9s %12s %9s %8s %10s\n' path round server req/s p99_ms user_us kernel_us
declare -A results
for path in $PATHS; do
  for r in $(seq "$ROUNDS"); do
    # Alternating rounds: the order of the servers rotates from one round to the next.
    order=()
    for i in "${!servers[@]}"; do order+=("${servers[$(((i + r) % ${#servers[@]}))]}"); done
    for server in "${order[@]}"; do
      spec=$(target "$server" "$path")
      [ -n "$spec" ] || continue
      url=${spec%% *}
      extra=()
      [ "$spec" = "$url" ] || extra=(-H 'Accept-Encoding: gzip')
      result=$(round "$(server_pid "$server" "$path")" ${extra[@]+"${extra[@]}"} "$url")
      results[$path/$server]+="$result"$'\n'
      printf '%-6s %-6s %-9s %12s %9s %8s %10s\n' "$path" "$r" "$server" $result
    done
  done
done
rss_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$exporter_pid/status")
rss_tls_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$exporter_tls_pid/status")

# Medians across rounds, then the verdict against the targets.
median() { sort -n | awk 'NF { v[++n] = $1 } END { print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'; }
column_median() { printf '%s' "${results[$1]:-}" | cut -d' ' -f"$2" | median; }
echo
for path in $PATHS; do
  e=$(column_median "$path/exporter" 1); n=$(column_median "$path/nginx" 1)
  ep=$(column_median "$path/exporter" 2); np=$(column_median "$path/nginx" 2)
  g=$(column_median "$path/golang" 1); gp=$(column_median "$path/golang" 2)
  eu=$(column_median "$path/exporter" 3); es=$(column_median "$path/exporter" 4)
  nu=$(column_median "$path/nginx" 3); ns=$(column_median "$path/nginx" 4)
  awk -v path="$path" -v e="$e" -v n="$n" -v p="$ep" -v np="$np" -v g="$g" -v gp="$gp" \
    -v eu="$eu" -v es="$es" -v nu="$nu" -v ns="$ns" 'BEGIN {
    ratio = e / n
    printf "%-5s median req/s: exporter %.0f, nginx %.0f, ratio %.3f (target >= 1.000) %s\n", path, e, n, ratio, (ratio >= 1.0 ? "ok" : "MISSED")
    printf "%-5s median p99:   exporter %.3f ms, nginx %.3f ms (target < 2 ms) %s\n", path, p, np, (p < 2.0 ? "ok" : "MISSED")
    printf "%-5s median CPU per request: exporter %.2f us user + %.2f us kernel, nginx %.2f us user + %.2f us kernel\n", path, eu, es, nu, ns
    if (g > 0) printf "%-5s client_golang: %.0f req/s (exporter %.1fx), p99 %.3f ms\n", path, g, e / g, gp
  }'
done
awk -v rss="$rss_kib" -v tls="$rss_tls_kib" 'BEGIN {
  printf "exporter peak RSS: %.1f MiB plain, %.1f MiB TLS (target < 16 MiB) %s\n", rss / 1024, tls / 1024, (rss < 16 * 1024 && tls < 16 * 1024 ? "ok" : "MISSED")
}'
