#!/usr/bin/env bash
# One session on the GPU machine lent through this workplace's device tool (H200, PyTorch with CUDA, no internet,
# 64 MiB carried): the exact commands behind benchmarks/results/gpu_session/. Run from the repository root there, with
#   .devdata/VOCdevkit  made here by: python benchmarks/gpu_pack_voc.py ../shared/data/pedestrians/VOCdevkit \
#                                      .devdata/VOCdevkit --max-side 416 --quality 75
#   .devdata/weights/   a copy of ../shared/data/weights/mobilenet_v2-b0353104.pth
#   .whl/               torch_pruning-1.6.1-py3-none-any.whl (pip download --no-deps torch-pruning==1.6.1)
# and $OUT set (what is written there comes back).
#   bash benchmarks/gpu_session.sh latency   FP16 latency, alone on the GPU
#   bash benchmarks/gpu_session.sh train     three jobs at once (one alone leaves the GPU mostly idle;
#                                                   16 CPU cores feed them)
set -u
W=/tmp/w
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PYTHONPATH="/tmp/site:$PWD"
export JETSON_COMPRESS_WEIGHTS=$PWD/.devdata/weights/mobilenet_v2-b0353104.pth
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
DATA=.devdata/VOCdevkit
CLI="python3 -m jetson_compress.cli"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import os; print(os.cpu_count(), len(os.sched_getaffinity(0)))'; python3 -c \
  "import torch, cv2, onnxruntime, torch_pruning; print(torch.__version__, torch.version.cuda, cv2.__version__, onnxruntime.__version__, torch_pruning.__version__)"; } \
  > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

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
for f in *.log; do tr '\r' '\n' < "$f" | grep -v "it/s" > "${f%.log}.txt"; done
d=base_unfrozen_long; f=$d/final_fp16.pt
if [ ! -f $f ]; then
  f=$d/last_ema_fp16.pt
  python3 -c "
import torch, sys
ck = torch.load(sys.argv[1], map_location='cpu', weights_only=False); ts = ck['train_state']
ck['state_dict'] = {k: v.half() if v.is_floating_point() else v for k, v in ts['ema'].items()}
ck['train_state'] = {'epoch': ts['epoch'], 'epochs': ts['epochs'], 'history': ts['history']}
torch.save(ck, sys.argv[2])" $d/last.pt $f
fi
tar czf "$OUT/$d.tgz" $d.txt $f $d/train_summary.json $d/*.yaml 2>/dev/null
for T in 0.5 0.7; do
  tar czf "$OUT/pc_$T.tgz" pc_$T.txt pc_$T/prune_compare.* pc_$T/runs/*/final.pt pc_$T/runs/*/train_summary.json 2>/dev/null
done
for f in *.txt; do echo "== $f"; tail -5 "$f"; done
ls -la "$OUT"
