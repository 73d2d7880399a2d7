#!/usr/bin/env bash
# embed-catalog on a lent GPU machine, unattended, in at most BUDGET_S seconds (default 480, the issue's 8 minutes):
# 256-px and 800-px catalogues (N JPEGs each, 20,000 by default), decode alone for each decoder (Pillow processes,
# the job's shared-memory Pillow loader, the device's nvJPEG side), the bare network (eager and compiled), the job
# with each --decode mode (cpu, gpu, both) with and without --compile, `ctl embed-catalog` end to end with its
# start-up, and the per-product cosine of the device paths against the CPU path; at the end every figure as a
# ratio against the issue's targets (met / not met). Everything printed also goes to $OUT/gpu_embed.log, the
# figures to $OUT/gpu_embed.json (and one JSON per section in $OUT/gpu_embed/).
#
# Each section runs in its own process under `timeout`, in order of importance, and is skipped when the budget
# left cannot fit it: a failing or hanging section costs only its own figures, and a smaller budget drops the
# extras (second repeats, more compiled runs) before it would cut N below 20,000.
#
# Run from the repository root of the lent machine (one H200, 16 cores, python3 3.12, torch 2.11), carrying the
# wheels of `make gpu-wheels` (device tool: carry=[".whl"]; bench/gpu_env.sh installs them beside that python):
#   BUDGET_S=480 bash bench/gpu_embed.sh
# CPU rehearsal of every section (torchvision's CPU decoder stands in for nvJPEG; not a measurement):
#   PY=.venv/bin/python DEVICE=cpu N=48 BATCH=8 SIZE=64 BUDGET_S=1500 bash bench/gpu_embed.sh
# Env: BUDGET_S (480), DEVICE (cuda), N (20000 per catalogue), BATCH (256; 8 on cpu), SIZE (224: the network's
# input; smaller only for rehearsals), WORKERS (Pillow processes; default the job's own: cores - 2 on CUDA),
# REPEATS (2 from a budget of 420 s, else 1), KEEP (1: keep the generated catalogues), PY, OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-cuda}
source bench/gpu_env.sh                 # PY, OUT, PYTHONPATH (and the carried wheels installed)
RESULTS="$OUT/gpu_embed"
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS/status.jsonl"
exec > >(tee -a "$OUT/gpu_embed.log") 2>&1
TEE=$!

N=${N:-20000}
if [ "$DEVICE" = cuda ]; then BATCH=${BATCH:-256}; else BATCH=${BATCH:-8}; fi
SIZE=${SIZE:-224}
REPEATS=${REPEATS:-$(( BUDGET_S >= 420 ? 2 : 1 ))}
DSEC=$(( BUDGET_S >= 420 ? 10 : 6 ))    # seconds per decode-alone contender (fewer images if it is slow)
WFLAG=${WORKERS:+--workers $WORKERS}   # empty: the job's own default
DEADLINE=$(( START + BUDGET_S ))
RESERVE=10                              # kept for the report
WORK=$(mktemp -d /tmp/gpu_embed.XXXXXX)
CURRENT=""                              # the running section's `timeout`, stopped with this script
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
on_signal() { [ -n "$CURRENT" ] && kill -TERM "$CURRENT" 2>/dev/null; wait; exit 130; }
trap cleanup EXIT
trap on_signal INT TERM

echo "== gpu_embed: budget ${BUDGET_S} s, device $DEVICE, N $N per catalogue, batch $BATCH, input $SIZE px," \
     "repeats $REPEATS, work in $WORK, results in $OUT ($(( SECONDS - START )) s of set-up)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# section NAME CAP MIN command...: run it under `timeout` (at most CAP s and what the budget leaves), or skip it
# when fewer than MIN s are left; how it ended goes to status.jsonl for the report.
section() {
  local name=$1 cap=$2 min=$3
  shift 3
  local left=$(( DEADLINE - SECONDS - RESERVE ))
  local status rc=0 t0=$SECONDS
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

sec() { $PY -m bench.gpu_embed_sections "$@" --results "$RESULTS" --device "$DEVICE" --batch "$BATCH" --size "$SIZE"; }

job() {   # job PX MODE TAG [--compile]: the job in its own process, one --decode mode
  local px=$1 mode=$2 tag=$3
  shift 3
  sec job --px "$px" --decode "$mode" --tag "$tag" --manifest "$WORK/c$px/catalog.parquet" --ckpt "$WORK/ckpt.pt" \
    --out "$WORK/out_$tag" $WFLAG "$@"
}

ctl_run() {  # ctl_run PX: `ctl embed-catalog` as a user runs it (defaults), timed from process start
  local px=$1 extra="" t0 t1
  [ "$DEVICE" = cuda ] || extra="--device cpu --decode both --batch-size $BATCH --image-size $SIZE"
  t0=$(date +%s%N)
  $PY -m jobs.cli embed-catalog --manifest "$WORK/c$px/catalog.parquet" --checkpoint "$WORK/ckpt.pt" \
    --out "$WORK/out_ctl_$px" --quiet $WFLAG $extra > "$WORK/ctl_$px.txt" || return $?
  t1=$(date +%s%N)
  cat "$WORK/ctl_$px.txt"
  sec ctl-line --tag "$px" --log "$WORK/ctl_$px.txt" --wall "$(( (t1 - t0) / 1000000 ))e-3"
}
export PY OUT RESULTS DEVICE BATCH SIZE WORK WFLAG
export -f sec job ctl_run

# In order of importance: every target's figures at 256 px, then 800 px, then --compile, then the extras.
section env 60 5 sec env --budget "$BUDGET_S" --n "$N" --repeats "$REPEATS"
section make_256 90 10 $PY -m bench.make_catalogue "$WORK/c256" --n "$N" --px 256
section checkpoint 90 10 sec checkpoint --out "$WORK/ckpt.pt"
section decode_256 $(( 3 * DSEC + 40 )) 20 sec decode --px 256 --manifest "$WORK/c256/catalog.parquet" \
  --seconds "$DSEC" $WFLAG
section network 60 10 sec network --ckpt "$WORK/ckpt.pt" --seconds 5
for mode in cpu gpu both; do
  section "job_256_$mode" 90 12 job 256 "$mode" "256_$mode"
done
section ctl_256 90 12 ctl_run 256
section agree_256_gpu 30 5 sec agree --a "$WORK/out_256_cpu" --b "$WORK/out_256_gpu" --tag 256_gpu
section agree_256_both 30 5 sec agree --a "$WORK/out_256_cpu" --b "$WORK/out_256_both" --tag 256_both

section make_800 120 20 $PY -m bench.make_catalogue "$WORK/c800" --n "$N" --px 800
section decode_800 $(( 3 * DSEC + 40 )) 25 sec decode --px 800 --manifest "$WORK/c800/catalog.parquet" \
  --seconds "$DSEC" $WFLAG
for mode in cpu gpu both; do
  section "job_800_$mode" 120 15 job 800 "$mode" "800_$mode"
done
section agree_800_gpu 30 5 sec agree --a "$WORK/out_800_cpu" --b "$WORK/out_800_gpu" --tag 800_gpu
section agree_800_both 30 5 sec agree --a "$WORK/out_800_cpu" --b "$WORK/out_800_both" --tag 800_both
rm -rf "$WORK"/out_800_*                # disk: the 800-px outputs have served

section job_256_both_compile 240 45 job 256 both 256_both_compile --compile
section network_compiled 150 25 sec network --ckpt "$WORK/ckpt.pt" --seconds 5 --compile

if (( REPEATS >= 2 )); then             # extras, while the budget lasts
  for mode in both cpu gpu; do
    section "job_256_${mode}_r2" 90 12 job 256 "$mode" "256_${mode}_r2"
  done
  section job_256_gpu_compile 150 25 job 256 gpu 256_gpu_compile --compile
  section job_800_both_r2 120 15 job 800 both 800_both_r2
fi

RESERVE=0 section report 30 1 $PY -m bench.gpu_embed_report "$RESULTS" "$OUT/gpu_embed.json"
echo "== gpu_embed done in $(( SECONDS - START )) s of a ${BUDGET_S} s budget; log $OUT/gpu_embed.log, figures $OUT/gpu_embed.json"
exec >&- 2>&-                           # let tee write the log's last lines before the script ends
wait "$TEE" 2>/dev/null || true
