#!/usr/bin/env bash
# Line protocol, arcdb against VictoriaMetrics, side by side in one run: wrk posts the same
# body of N lines over and over to each server in turn (same threads, connections, duration),
# and the script prints lines/s acknowledged, arcdb's sustained rate (its final flush included)
# and the ratio.
#
#   benches/lp_vs_victoriametrics.sh [seconds=60] [lines=5000] [tags=1] [fields=3] [none|gzip]
#
# With `gzip` the body is sent gzip-compressed (`Content-Encoding: gzip`), as Telegraf does.
# Needs: wrk and victoria-metrics (Debian packages), and a release build of arcdb
# (`cargo build --release`; the binary is taken from CARGO_TARGET_DIR or ./target).
# arcdb runs with its defaults: WAL on with fdatasync, local storage. VictoriaMetrics
# acknowledges from memory.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
lines=${2:-5000}
tags=${3:-1}
fields=${4:-3}
encoding=${5:-none}
threads=2
connections=8
arcdb=$(realpath "${CARGO_TARGET_DIR:-target}/release/arcdb")
token=benchmark-admin-token-0123456789abcdef

for tool in wrk victoria-metrics "$arcdb"; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One body: `cpu,host=host_N[,tagK=vK] value=…,f1=…,… <ns>`, hosts cycling over 1,000.
python3 - "$lines" "$tags" "$fields" > "$work/body.lp" <<'PY'
import sys
lines, tags, fields = (int(a) for a in sys.argv[1:])
base = 1_768_471_200_000_000_000
for i in range(lines):
    tagset = "".join(f",tag{k}=v{(i * 7 + k) % 10}" for k in range(1, tags))
    fieldset = ",".join(f"f{k}={(i * 31 + k * 7) % 1000 / 10}" for k in range(fields))
    print(f"cpu,host=host_{i % 1000}{tagset} {fieldset} {base + i * 1_000_000}")
PY

body=$work/body.lp
encoding_header=
case $encoding in
  none) ;;
  gzip)
    gzip -c "$work/body.lp" > "$work/body.lp.gz"
    body=$work/body.lp.gz
    encoding_header='wrk.headers["Content-Encoding"] = "gzip"'
    ;;
  *) echo "unknown encoding $encoding (none or gzip)" >&2; exit 1 ;;
esac

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$body", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "text/plain"
$encoding_header
LUA

wait_ready() {
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "server at $1 did not start" >&2
  exit 1
}

# Prints lines/s acknowledged (2xx answers only) from wrk's summary.
run_wrk() {
  local url=$1 out=$work/wrk.$RANDOM
  wrk -t$threads -c$connections -d"${seconds}s" -s "$work/post.lua" --latency "$url" > "$out"
  local requests non2xx
  requests=$(awk '/requests in/ {print $1}' "$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
  local p99
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  echo "$(( (requests - ${non2xx:-0}) * lines )) ${non2xx:-0} $p99"
}

arc_port=$(free_port)
mkdir -p "$work/arcdb"
(cd "$work/arcdb" && ARC_SERVER_HOST=127.0.0.1 ARC_SERVER_PORT=$arc_port ARC_LOG_LEVEL=warn \
  ARC_AUTH_BOOTSTRAP_TOKEN=$token exec "$arcdb" > log 2>&1) &
pids+=($!)
wait_ready "http://127.0.0.1:$arc_port/ready"
read -r arc_lines arc_refused arc_p99 < <(run_wrk "http://127.0.0.1:$arc_port/write?db=bench")
flush_start=$(date +%s.%N)
curl -sf -X POST -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$arc_port/api/v1/write/line-protocol/flush" > /dev/null
flush_s=$(echo "$(date +%s.%N) - $flush_start" | bc -l)
arc_peak=$(awk '/VmHWM/ {printf "%.2f GiB", $2 / 1048576}' "/proc/${pids[0]}/status")
kill "${pids[0]}"
# VictoriaMetrics gets the cores only once arcdb has exited.
wait "${pids[0]}" 2>/dev/null || true

vm_port=$(free_port)
victoria-metrics -storageDataPath "$work/vm" -httpListenAddr "127.0.0.1:$vm_port" \
  -loggerLevel ERROR > "$work/vm.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$vm_port/health"
read -r vm_lines vm_refused vm_p99 < <(run_wrk "http://127.0.0.1:$vm_port/write")

arc_rate=$(echo "$arc_lines / $seconds" | bc -l)
arc_sustained=$(echo "$arc_lines / ($seconds + $flush_s)" | bc -l)
vm_rate=$(echo "$vm_lines / $seconds" | bc -l)
printf 'body: %d lines, %d tag(s), %d field(s), %s (%d bytes sent); wrk -t%d -c%d -d%ds\n' \
  "$lines" "$tags" "$fields" "$encoding" "$(stat -c %s "$body")" "$threads" "$connections" "$seconds"
printf 'arcdb:           %12.0f lines/s acknowledged, %12.0f sustained (final flush %.2f s), p99 %s, %s non-2xx, peak RSS %s\n' \
  "$arc_rate" "$arc_sustained" "$flush_s" "$arc_p99" "$arc_refused" "$arc_peak"
printf 'VictoriaMetrics: %12.0f lines/s acknowledged, p99 %s, %s non-2xx\n' "$vm_rate" "$vm_p99" "$vm_refused"
printf 'ratio arcdb sustained / VictoriaMetrics: %.2f\n' "$(echo "$arc_sustained / $vm_rate" | bc -l)"
