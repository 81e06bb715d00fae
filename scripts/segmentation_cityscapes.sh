#!/bin/bash
# Semantic segmentation on Cityscapes (Revisiting-Contrastive-SSL evaluation/segmentation, configs/cityscapes.yml): the
# 19 train classes of the fine annotations, dilated ResNet-50 (output stride 16) + FCN head (dilation 1), whole network
# fine-tuned with SyncBatchNorm on 2 GPUs x 4 = batch 8 (the reference's multi_gpu.py on 2 x 1080 Ti), Adam lr 1e-4,
# wd 1e-4, poly 0.9, 150 epochs, scale {0.5..2} + 768 crop + flip, scored on the full 2048 x 1024 val images; five runs,
# seeds 0-4, reported as mean and std (docs/segmentation.md).
# Usage: sbatch scripts/segmentation_cityscapes.sh   (DATASET_PATH=... PRETRAINED=... EXPERIMENT_PATH=... to override)
# Pre-emption: SIGUSR1 (120 s before the limit) or SIGTERM saves a checkpoint; the job requeues and resumes, finished
# runs are not redone.
#SBATCH --job-name=segmentation_cityscapes
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=8
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/cityscapes}   # holds leftImg8bit/ and gtFine/
PRETRAINED=${PRETRAINED:-./runs/moco_coco_800ep/checkpoint.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/segmentation_cityscapes}
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
srun --kill-on-bad-exit=1 python -u eval_segmentation.py \
  "$DATASET_PATH" \
  --recipe cityscapes \
  --pretrained "$PRETRAINED" \
  --arch resnet50 \
  --train_split train \
  --val_split val \
  --crop_size 768 \
  --test_size 0 \
  --scales 0.5 0.75 1.0 1.25 1.5 1.75 2.0 \
  --head_dilation 1 \
  --sync_bn True \
  --epochs 150 \
  --batch_size 8 \
  --optimizer adam \
  --lr 0.0001 \
  --wd 0.0001 \
  --scheduler poly \
  --poly_power 0.9 \
  --test_batch_size 6 \
  --eval_every 1 \
  --report best \
  --seed 0 \
  --runs 5 \
  --workers 4 \
  --print_freq 50 \
  --output_dir "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
