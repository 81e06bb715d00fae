#!/bin/bash
# MoCo v2 baseline on COCO train2017 (a flat folder of images), ResNet-50, 200 epochs, 2 GPUs, total batch 256
# (Van Gansbeke et al. 2021, moco_coco script: VOC SVM mAP 76.1).
# Every hyperparameter of the published recipe is written out. Usage: sbatch scripts/moco_coco_200ep.sh
#SBATCH --job-name=moco_coco_200ep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=8
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/coco/train2017}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/moco_coco_200ep}
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
  --epochs 200 \
  --workers 16 \
  --batch-size 256 \
  --lr 0.3 \
  --momentum 0.9 \
  --weight-decay 1e-4 \
  --moco-dim 128 \
  --moco-k 65536 \
  --moco-m 0.999 \
  --moco-t 0.2 \
  --mlp \
  --cos \
  --num_crops 2 \
  --size_crops 224 \
  --min_scale_crops 0.2 \
  --max_scale_crops 1.0 \
  --print-freq 100 \
  --output-dir "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
