#!/usr/bin/env bash
# The sessions on the GPU machine lent through this workplace's device tool (H200, PyTorch with CUDA, no internet,
# 64 MiB carried): the exact commands behind benchmarks/results/gpu_session/ (`latency`, `train`; 2026-11-30) and
# benchmarks/results/gpu_input_size/ (`input_size`; 2026-12-04). Run from the repository root there, with
#   .devdata/VOCdevkit  made here by: python benchmarks/gpu_pack_voc.py ../shared/data/pedestrians/VOCdevkit \
#                                      .devdata/VOCdevkit --max-side 416 --quality 75
#   .devdata/weights/   a copy of ../shared/data/weights/mobilenet_v2-b0353104.pth
#   .whl/               torch_pruning-1.6.1-py3-none-any.whl (pip download --no-deps torch-pruning==1.6.1)
# and $OUT set (what is written there comes back).
#   bash benchmarks/gpu_session.sh latency   FP16 latency, alone on the GPU
#   bash benchmarks/gpu_session.sh train     three jobs at once (one alone leaves the GPU mostly idle;
#                                                   16 CPU cores feed them)
#   bash benchmarks/gpu_session.sh input_size  the best recipe trained at 320, 416 and 512 px at once; the data for it
#       (trainval only; COCO's images kept near full size, where the small people are):
#       python benchmarks/gpu_pack_voc.py ../shared/data/pedestrians/VOCdevkit .devdata/VOCdevkit --splits trainval \
#           --max-side 416 --quality 60 --source coco_=640:75        # 25.4 MiB; no .whl/ needed
#   EPOCHS (default 40, the recipe's), BUDGET (train.time_budget_s, default 420: fewer epochs only if 40 would not
#   fit), JOB_TIMEOUT (default 500 s), SIZES (default "320 416 512"), SEED (default 0), W320 / W416 / W512 (workers)
#   and DATA override the input_size job, e.g. for a dry run here.
set -u
W=/tmp/w
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PYTHONPATH="/tmp/site:$PWD"
export JETSON_COMPRESS_WEIGHTS=$PWD/.devdata/weights/mobilenet_v2-b0353104.pth
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
DATA=${DATA:-.devdata/VOCdevkit}
CLI="python3 -m jetson_compress.cli"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import os; print(os.cpu_count(), len(os.sched_getaffinity(0)))'; python3 -c \
  "import torch, cv2, onnxruntime as ort; print(torch.__version__, torch.version.cuda, cv2.__version__, ort.__version__)"; } \
  > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# A run's log without its progress-bar lines.
# tqdm's rate is it/s or s/it (img/s or s/img in evaluation); blank lines are what a cleared bar leaves.
strip_progress() { tr '\r' '\n' < "$1" | grep -vE '(it|img)/s|s/(it|img)|^ *$' > "$2"; }

# The EMA weights of a run's last.pt as an fp16 checkpoint: what comes back when a run was stopped before final_fp16.pt.
ema_of_last() {
  python3 -c "
import torch, sys
ck = torch.load(sys.argv[1], map_location='cpu', weights_only=False); ts = ck['train_state']
ck['state_dict'] = {k: v.half() if v.is_floating_point() else v for k, v in ts['ema'].items()}
ck['train_state'] = {'epoch': ts['epoch'], 'epochs': ts['epochs'], 'history': ts['history']}
torch.save(ck, sys.argv[2])" "$1" "$2"
}

if [ "${1:-}" = input_size ]; then
  # Issue #2, "does the input size limit it?": the best 320-px recipe so far (backbone unfrozen at a tenth of the
  # learning rate, copy-paste at P = 0.5; seed 0) trained from the ImageNet backbone at 320, 416 and 512 px side by
  # side, same data, same epochs (unless the time budget fits fewer: the log says so); evaluated afterwards on the
  # original test images at each run's own size, hence --no-eval. 16 CPU cores feed the three (each run's Python side,
  # not the GPU, is its limit).
  E=${EPOCHS:-40}
  W320=${W320:-4}; W416=${W416:-5}; W512=${W512:-6}   # data-loading workers per run
  SIZES=${SIZES:-320 416 512}; SEED=${SEED:-0}; T=""; [ "$SEED" = 0 ] || T=_s$SEED
  for S in $SIZES; do
    eval "NW=\${W$S:-5}"
    timeout "${JOB_TIMEOUT:-500}" $CLI train --data "$DATA" --out "$W/in$S$T" --half --no-resume --no-eval \
      --epochs "$E" --set model.input_size=$S --set train.backbone_lr_mult=0.1 --set train.copy_paste_prob=0.5 \
      --set train.seed=$SEED --set train.workers=$NW --set train.threads=2 --set train.time_budget_s=${BUDGET:-420} \
      > "$W/in$S$T.log" 2>&1 &
  done
  wait
  cd "$W"
  for S in $SIZES; do
    d=in$S$T
    strip_progress $d.log $d.txt
    f=$d/final_fp16.pt
    if [ ! -f $f ] && [ -f $d/last.pt ]; then f=$d/last_ema_fp16.pt; ema_of_last $d/last.pt $f; fi
    tar czf "$OUT/$d.tgz" $d.txt $f $d/train_summary.json $d/*.yaml 2>/dev/null
    echo "== $d"; tail -4 $d.txt
  done
  ls -la "$OUT"
  exit 0
fi

if [ "${1:-}" = latency ]; then
  # FP16 latency of the baseline against ours and Torch-Pruning at -50% and -70% FLOPs.
  timeout 150 python3 benchmarks/gpu_latency.py --data $DATA --batches 1 16 --rounds 20 --replays 20 --threads 16 \
    --out "$W/gpu_latency" > "$W/gpu_latency.log" 2>&1
  echo "rc $?"
  (cd "$W" && tar czf "$OUT/gpu_latency.tgz" gpu_latency.log gpu_latency)
  exit 0
fi

# (A) the baseline recipe with the backbone unfrozen and the epochs fitted to 400 s of training (#2: does more
# training compute lift AP? evaluated afterwards on the original test images, hence --no-eval);
# (B, C) prune_compare at -50% and -70%: ours against Torch-Pruning, fine-tune epochs fitted to 170 s on the first
# variant and the same epochs for the second (#3: a larger fine-tune budget for both).
timeout 470 $CLI train --data $DATA --set train.freeze_blocks=0 --set train.workers=5 --set train.time_budget_s=400 \
  --epochs 300 --half --no-resume --no-eval --out "$W/base_unfrozen_long" > "$W/base_unfrozen_long.log" 2>&1 &
for T in 0.5 0.7; do
  timeout 470 python3 benchmarks/prune_compare.py --data $DATA --targets $T --methods richness+comp torch-pruning \
    --finetune-epochs 200 --set train.time_budget_s=170 --set train.workers=4 --latency-rounds 0 --threads 2 \
    --out "$W/pc_$T" > "$W/pc_$T.log" 2>&1 &
done
wait
cd "$W"
# A returned file may have 16 MiB: no last.pt (optimizer state), no progress-bar lines. If the run was stopped before
# final_fp16.pt, its last EMA weights come back instead (fp16, the train history kept).
for f in *.log; do strip_progress "$f" "${f%.log}.txt"; done
d=base_unfrozen_long; f=$d/final_fp16.pt
if [ ! -f $f ]; then f=$d/last_ema_fp16.pt; ema_of_last $d/last.pt $f; fi
tar czf "$OUT/$d.tgz" $d.txt $f $d/train_summary.json $d/*.yaml 2>/dev/null
for T in 0.5 0.7; do
  tar czf "$OUT/pc_$T.tgz" pc_$T.txt pc_$T/prune_compare.* pc_$T/runs/*/final.pt pc_$T/runs/*/train_summary.json 2>/dev/null
done
for f in *.txt; do echo "== $f"; tail -5 "$f"; done
ls -la "$OUT"
