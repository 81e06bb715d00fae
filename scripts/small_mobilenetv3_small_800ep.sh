#!/bin/bash
# SSL-small improved baseline (Shi et al. 2021), mobilenetv3_small, 800 epochs on ImageNet, 1 node x 8 GPUs, total batch 512:
# the README command of WOWNICE/ssl-small (the same for the five small models), AMP as its script.
# It restarts from a SEED-distilled checkpoint (SEED_CKPT, converted by python -m experiments.convert-seed);
# leave SEED_CKPT empty to start from random initialisation.
# Every hyperparameter of the published recipe is written out. Usage: sbatch scripts/small_mobilenetv3_small_800ep.sh
#SBATCH --job-name=small_mobilenetv3_small_800ep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=288:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/small_mobilenetv3_small_800ep}
SEED_CKPT=${SEED_CKPT:-}
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
  --arch mobilenetv3_small \
  --workers 64 \
  --epochs 800 \
  --batch-size 512 \
  --lr 0.06 \
  --momentum 0.9 \
  --weight-decay 1e-4 \
  --moco-dim 128 \
  --moco-k 65536 \
  --moco-m 0.999 \
  --moco-t 0.1 \
  --mlp wide \
  --aug-plus \
  --cj 1.0 \
  --grey-scale 0.5 \
  --gaussian-blur 0.5 \
  --cos \
  --crop-size 224 \
  --amp fp16 \
  --print-freq 10 \
  --output-dir "$EXPERIMENT_PATH" \
  ${SEED_CKPT:+--resume "$SEED_CKPT" --restart} &
RUN_PID=$!
wait "$RUN_PID"
