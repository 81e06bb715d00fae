#!/bin/bash
# MoCo v2 on ONE GPU (or a CPU node): no launcher needed; split-BN over 8 sub-batches simulates
# the per-GPU BN of an 8-GPU run. lr scaled linearly with the batch (0.03 per 256).
#SBATCH --job-name=moco_v2_1gpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/moco_v2_1gpu}
mkdir -p "$EXPERIMENT_PATH"

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
python -u main_moco.py "$DATASET_PATH" \
  --arch resnet50 \
  --workers 16 \
  --epochs 200 \
  --batch-size 128 \
  --lr 0.015 \
  --momentum 0.9 \
  --weight-decay 1e-4 \
  --moco-dim 128 \
  --moco-k 65536 \
  --moco-m 0.999 \
  --moco-t 0.2 \
  --mlp \
  --aug-plus \
  --cos \
  --bn-splits 8 \
  --amp bf16 \
  --output-dir "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
