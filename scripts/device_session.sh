#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the `device` tool, /work/.library/device/README.md), sized to fit its
# fixed budget (15 minutes of device time, 10 minutes a command) in one call:
#   1. the GPU benchmark rows of issue 6: `restoration.bench` at 512 px, 8 candidates, in float32, bfloat16, and
#      bfloat16 + torch.compile with CUDA graphs (`--compile reduce-overhead`); each JSON holds the round's
#      seconds and the candidates' U-Net TFLOP/s against the device's peak;
#   2. longer training of both networks at equal wall-clock budgets, side by side on the GPU: SIPL and the
#      ablation fine-tuned from the shipped weights on larger crops (`--time-budget`, `--workers`);
#   3. a check that evaluation runs on the GPU: `restoration.evaluate --device cuda` of the shipped SIPL (alone,
#      so its s/image is the GPU's restore time), then of the two new networks side by side, on the evaluation
#      photos (what ships is decided afterwards here, on the CPU: `scripts/wise_sweep.sh`, `evaluate_all.sh`).
#   4. (STAGES=scale) what issue 6 still asks of a GPU: one full round on a 4096 x 4096 image under a 16 GiB cap
#      (`restoration.bench --size 4096 --gpu-memory-cap 16`: an allocation past the cap fails the run, so a
#      finished run proves the fit; if the default 1024 px denoiser tiles do not fit, once more with 512 px), and
#      the throughput of 8 concurrent sessions at 512 px, batching on and off (`scripts/bench_sessions.py`).
#   0. (STAGES=prior, the default's first part) the pixel diffusion prior trained from scratch for PRIOR_SECONDS
#      (about 8-9 minutes) at a GPU's batch and crop, with the shipped architecture (`restoration.training.prior`, its
#      schedule fitted to the budget, EMA weights saved every 2 minutes): the weights come back in the archive as
#      session/prior/ and are measured here afterwards (`restoration.evaluate_prior`).
# STAGES picks the parts, comma-separated: prior, bench, train, eval, scale (default prior,train,eval: the prior
# first, then the networks with whatever time is left; STAGES=bench,train,eval is the eleventh session's run;
# STAGES=scale alone fits one call with room).
# Every stage has its own time limit, so one that hangs or fails costs only its own share; everything lands in
# $OUT/device_session.tar.gz (JSON, logs, the weights files) and $OUT/session.log.
#
# Here, once:  bash scripts/fetch_device_wheels.sh          (diffusers, pyiqa and their start-up needs -> .whl/)
#              bash scripts/get_photos.sh data/photos         (if data/photos is missing)
# Then the device tool's run, with  carry: [".whl", "data/photos/train", "data/photos/eval"],  timeout_s: 600,
#   command: bash scripts/device_session.sh
# Rehearsal on a CPU (minutes): DEVICE=cpu SIZE=64 REPEAT=1 TRAIN_SECONDS=20 TRAIN_CROP=64 TRAIN_BATCH=4 WORKERS=1 \
#   COMPILE=none EVAL_LIMIT=1 EVAL_SIZE=64 \
#   OUT=runs/rehearsal bash scripts/device_session.sh
# and of the scale part: STAGES=scale DEVICE=cpu SCALE_SIZE=128 SESSIONS_SIZE=64 OUT=runs/rehearsal \
#   bash scripts/device_session.sh   (on a CPU there is no memory cap to set: the 4096 px row runs without one)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/device_session}"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE:-512}"                  # the benchmark's image side
REPEAT="${REPEAT:-5}"                # timed rounds per benchmark row
COMPILE="${COMPILE:-reduce-overhead}"  # the third benchmark row's torch.compile mode; none = skip that row
TRAIN_SECONDS="${TRAIN_SECONDS:-180}"  # each network's training budget (the two train side by side)
TRAIN_CROP="${TRAIN_CROP:-256}"
TRAIN_BATCH="${TRAIN_BATCH:-16}"
WORKERS="${WORKERS:-7}"              # batch-making processes per training (16 cores there: 2 x 7 + 2)
# the training mixture's shares (clean, noise, noise+blur/jpeg, one other, composite; `--mixture`): leaning toward
# the composites, the targets still missed (rain+haze, noise:15+blur:1.5); the default mix gives 0.15 to composites
MIXTURE="${MIXTURE:-0.05,0.35,0.2,0.2,0.2}"
EVAL_LIMIT="${EVAL_LIMIT:-0}"        # photos per evaluation (0 = all 12)
EVAL_SIZE="${EVAL_SIZE:-256}"
PY="${PY:-python3}"
STAGES="${STAGES:-prior,train,eval}"  # which parts run: prior, bench, train, eval, scale
PRIOR_SECONDS="${PRIOR_SECONDS:-510}"  # the prior's training budget (seconds)
PRIOR_BATCH="${PRIOR_BATCH:-64}"
PRIOR_CROP="${PRIOR_CROP:-128}"
SCALE_SIZE="${SCALE_SIZE:-4096}"      # the large image's side (scale part)
GPU_CAP_GB="${GPU_CAP_GB:-16}"         # issue 6's cap on GPU memory for that round, GiB
SESSIONS_SIZE="${SESSIONS_SIZE:-512}"  # image side of the concurrent sessions (scale part)
want() { [[ ",$STAGES," == *",$1,"* ]]; }
work="$OUT/session"
rm -rf "$work"
mkdir -p "$work"
export PYTHONUNBUFFERED=1

log() { echo "[$(date +%T)] $*" | tee -a "$work/session.log" >&2; }

DEADLINE="${DEADLINE:-560}"  # seconds: no stage runs past this (the tool's command limit is 600 s)

stage() {  # NAME LIMIT_S COMMAND...: stdout -> NAME.json, stderr -> NAME.err; returns the command's status
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS rc left=$((DEADLINE - SECONDS - 15))  # 15 s stay for the summary and the archive
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    log "skip $name: ${left} s left before the deadline"
    return 124
  fi
  log "start $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$work/$name.json" 2>"$work/$name.err"
  rc=$?
  log "end $name: rc $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || tail -5 "$work/$name.err" | sed 's/^/    /' | tee -a "$work/session.log" >&2
  return "$rc"
}

# -- environment --------------------------------------------------------------------------------------------
if [ -d .whl ] && ! "$PY" -c "import diffusers, pyiqa" 2>/dev/null; then
  site="$(mktemp -d)"
  log "installing the carried wheels into $site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { log "wheel install failed"; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PY' 2>&1 | tee -a "$work/session.log"
import platform, torch, diffusers, pyiqa
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, gpu {gpu}, "
      f"diffusers {diffusers.__version__}, pyiqa {pyiqa.__version__}")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv \
  | tee -a "$work/session.log"

host="$DEVICE"
[ "$DEVICE" = cpu ] || host="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)"

# -- 0. the diffusion prior, first ------------------------------------------------------------------------------
if want prior; then
  sources=(--images data/photos/train)
  "$PY" -c "from restoration.training.data import skimage_photos; skimage_photos()" 2>/dev/null && sources+=(--skimage)
  budget=$((DEADLINE - SECONDS - 15 - 40))  # 40 s: start-up and the last save
  [ "$budget" -gt "$PRIOR_SECONDS" ] && budget=$PRIOR_SECONDS
  stage train_prior $((budget + 40)) "$PY" -m restoration.training.prior "${sources[@]}" --device "$DEVICE" \
    --time-budget "$budget" --batch-size "$PRIOR_BATCH" --crop "$PRIOR_CROP" --threads 2 --checkpoint-minutes 2 \
    --out "$work/prior" --state "$work/prior_state.pt"
  rm -f "$work/prior_state.pt"  # the optimizer state stays behind; the EMA prior comes back
fi

# -- 1. benchmark rows ----------------------------------------------------------------------------------------
if want bench; then
  bench=("$PY" -m restoration.bench --size "$SIZE" --candidates 8 --device "$DEVICE" --repeat "$REPEAT" --json)
  stage bench_fp32 75 "${bench[@]}" --label "$host, $SIZE px, K=8, fp32"
  stage bench_bf16 75 "${bench[@]}" --precision bf16 --label "$host, $SIZE px, K=8, bf16 autocast"
  if [ "$COMPILE" != none ]; then
    stage bench_bf16_compile 120 "${bench[@]}" --precision bf16 --compile "$COMPILE" --warmup 2 \
      --label "$host, $SIZE px, K=8, bf16 autocast + torch.compile $COMPILE"
  fi
fi

# -- 4. scale: a 4096 px round under the memory cap, 8 concurrent sessions -------------------------------------
# (run before the trainings, which take whatever time is left)
if want scale; then
  cap=()
  [ "$DEVICE" = cpu ] || cap=(--gpu-memory-cap "$GPU_CAP_GB")
  large=("$PY" -m restoration.bench --size "$SCALE_SIZE" --candidates 8 --device "$DEVICE" --repeat 1 --warmup 1
         --no-naive "${cap[@]}" --json)
  stage "bench_${SCALE_SIZE}" 240 "${large[@]}" --label "$host, $SCALE_SIZE px, K=8, fp32, tiled (1024 px)" \
    || stage "bench_${SCALE_SIZE}_tile512" 240 "${large[@]}" --tile 512 \
      --label "$host, $SCALE_SIZE px, K=8, fp32, tiled (512 px)"
  sessions=("$PY" scripts/bench_sessions.py --sessions 8 --rounds 2 --size "$SESSIONS_SIZE" --device "$DEVICE" --json)
  stage sessions_batched 150 "${sessions[@]}" --batch-sessions 8
  stage sessions_unbatched 150 "${sessions[@]}" --batch-sessions 1
fi

# -- 2. training, both networks side by side ------------------------------------------------------------------
if want train; then
  sources=(--images data/photos/train --exclude Storm,Wood)
  "$PY" -c "from restoration.training.data import skimage_photos; skimage_photos()" 2>/dev/null && sources+=(--skimage) \
    || log "scikit-image's bundled photos are not available there: training on data/photos/train alone"
  budget=$((DEADLINE - SECONDS - 15 - 60 - 60))  # what is left after the start-up and save (60 s), evaluation (60 s)
  [ "$budget" -gt "$TRAIN_SECONDS" ] && budget=$TRAIN_SECONDS
  log "training budget: $budget s per network"
  train=("$PY" -m restoration.training.sipl "${sources[@]}" --device "$DEVICE" --crop "$TRAIN_CROP" --batch "$TRAIN_BATCH"
         --steps 1000000 --time-budget "$budget" --lr 2e-4 --min-lr 1e-5 --warmup 100 --seed 1
         --workers "$WORKERS" --threads 1 --checkpoint-every 1000 --mixture "$MIXTURE")  # the GPU computes; CPU threads would only contend
  limit=$((budget + 60))
  if [ "$budget" -ge 10 ]; then
    stage train_sipl "$limit" "${train[@]}" --init assets/sipl.safetensors --out "$work/sipl" &
    stage train_ablation "$limit" "${train[@]}" --ablation --init assets/sipl_ablation.safetensors \
      --out "$work/ablation" &
    wait
  else
    log "skip the trainings: too little time left"
  fi
fi

# -- 3. evaluation on the device --------------------------------------------------------------------------------
evaluate=(env OMP_NUM_THREADS=2 "$PY" -m restoration.evaluate --images data/photos/eval --size "$EVAL_SIZE" --seed 0 --device "$DEVICE" --json)
[ "$EVAL_LIMIT" -gt 0 ] && evaluate+=(--limit "$EVAL_LIMIT")
want eval && stage eval_shipped_noise25 60 "${evaluate[@]}" --backbone sipl --degradation noise:25  # alone: a clean s/image
for net in sipl ablation; do
  want eval && [ -f "$work/$net/weights.safetensors" ] || continue
  for spec in noise:25 noise:15+blur:1.5 rain+haze; do
    tag="$(echo "$spec" | tr ':+.' '__p')"
    stage "eval_${net}_${tag}" 60 "${evaluate[@]}" --backbone "$work/$net/weights.safetensors" \
      --degradation "$spec" &
  done
done
wait

# -- results ---------------------------------------------------------------------------------------------------
"$PY" - "$work" <<'PY' 2>&1 | tee -a "$work/session.log"
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
for f in sorted(work.glob("*.json")):
    if f.stem.startswith("train_"):
        continue  # the trainings log to stderr; their facts are read from the weights below
    try:
        d = json.loads(f.read_text())
    except ValueError:
        print(f"{f.stem}: no JSON (see {f.stem}.err)")
        continue
    if "speedup_vs_naive" in d:
        tf = d.get("unet_tflops", {})
        naive = f"x{d['speedup_vs_naive']:.2f} vs naive" if d["speedup_vs_naive"] else "no naive loop"
        cap = f" (cap {d['gpu_memory_cap_gb']:g} GiB)" if d.get("gpu_memory_cap_gb") else ""
        print(f"{f.stem}: {d['size']} px, round {d['seconds']['round']:.3f} s, candidates "
              f"{d['seconds']['candidates']:.3f} s, {naive}, peak {d['peak_memory_mb']:.0f} MB{cap}, U-Net {tf} "
              f"TFLOP/s of peak {d.get('peak_tflops')} (fraction {d.get('peak_fraction')})")
    elif "rounds_per_minute" in d:
        lat = d["round_latency_seconds"]
        print(f"{f.stem}: {d['sessions']} sessions at {d['size']} px, batches of up to {d['batch_sessions']}: "
              f"{d['rounds_done']} rounds, {d['rounds_per_minute']:.1f} rounds/min, latency p50 {lat['p50']:.2f} s "
              f"p95 {lat['p95']:.2f} s, batches {d['candidate_batches']}, peak {d['peak_memory_mb']:.0f} MB, "
              f"errors {len(d['errors'])}")
    elif "mean" in d:
        m = d["mean"]
        print(f"{f.stem}: {d['degradation']} PSNR {m['psnr']:.2f} dB (input {m['input_psnr']:.2f}), "
              f"{m['seconds']:.3f} s/image")
for run in ("sipl", "ablation"):
    w = work / run / "weights.safetensors"
    if w.exists():
        from safetensors import safe_open
        with safe_open(str(w), "pt") as fh:
            facts = json.loads(fh.metadata()["facts"])
        print(f"train_{run}: {facts['steps']} steps in {facts['seconds']} s, final loss {facts['final_loss']}")
PY
for run in sipl ablation; do rm -f "$work/$run/checkpoint.pt"; done  # the optimizer state stays behind
tar -czf "$OUT/device_session.tar.gz" -C "$OUT" session && cp "$work/session.log" "$OUT/session.log"
log "results in $OUT/device_session.tar.gz ($(du -h "$OUT/device_session.tar.gz" | cut -f1))"
