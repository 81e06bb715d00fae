#!/bin/bash
# MoCo v2, ResNet-50, 800 epochs on ImageNet, 1 node x 8 GPUs (Chen et al. 2020: released model: 71.1 linear top-1).
# Every hyperparameter of the published recipe is written out. Usage: sbatch scripts/moco_v2_800ep.sh
#SBATCH --job-name=moco_v2_800ep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=240:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/moco_v2_800ep}
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
  --workers 80 \
  --epochs 800 \
  --batch-size 256 \
  --lr 0.03 \
  --momentum 0.9 \
  --weight-decay 1e-4 \
  --moco-dim 128 \
  --moco-k 65536 \
  --moco-m 0.999 \
  --moco-t 0.2 \
  --mlp \
  --aug-plus \
  --cos \
  --crop-size 224 \
  --print-freq 10 \
  --output-dir "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
