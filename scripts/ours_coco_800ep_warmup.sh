#!/bin/bash
# Revisiting-Contrastive-SSL on COCO train2017 (flat folder), ResNet-50, 800 epochs, 2 GPUs, total batch 256:
# MoCo + constrained multi-crop (2x160 + 4x96) + AutoAugment + nearest-neighbour positives, nearest-neighbour loss off for the first 20 epochs
# (Van Gansbeke et al. 2021: VOC SVM mAP 85.9 without warmup). Order of the reference's main_ours_warmup.py
# (builder/builder_ours_warmup.py): neighbours picked, then the step's keys enqueued: --aux-order neighbours-first.
# Every hyperparameter of the published recipe is written out. Usage: sbatch scripts/ours_coco_800ep_warmup.sh
#SBATCH --job-name=ours_coco_800ep_warmup
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=8
#SBATCH --time=288:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/coco/train2017}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/ours_coco_800ep_warmup}
mkdir -p "$EXPERIMENT_PATH"
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}

# pre-emption and the time limit: SLURM sends USR1 to this shell 120 s early; it is passed on to the run, which
# saves a checkpoint at its next step and exits 0; the job then requeues itself and the same command resumes
requeue() {
  echo "USR1: checkpointing, then requeueing job $SLURM_JOB_ID"
  kill -USR1 "$RUN_PID" 2>/dev/null || true
  wait "$RUN_PID" || true
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap requeue USR1
srun --kill-on-bad-exit=1 python -u main_moco.py "$DATASET_PATH" \
  --arch resnet50 \
  --epochs 800 \
  --workers 16 \
  --batch-size 256 \
  --lr 0.3 \
  --momentum 0.9 \
  --weight-decay 1e-4 \
  --moco-dim 128 \
  --moco-k 65536 \
  --moco-m 0.995 \
  --moco-t 0.2 \
  --mlp \
  --cos \
  --num_crops 2 4 \
  --size_crops 160 96 \
  --min_scale_crops 0.2 0.05 \
  --max_scale_crops 1.0 0.14 \
  --constrained-cropping \
  --min-overlap 0.1 \
  --auto-augment 0 2 3 4 5 \
  --aux-topk 20 \
  --aux-weight 0.4 \
  --aux-order neighbours-first \
  --warmup-epochs 20 \
  --print-freq 100 \
  --output-dir "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
