#!/bin/bash
# Semantic segmentation on PASCAL VOC 2012 (Revisiting-Contrastive-SSL evaluation/segmentation, configs/pascal_voc.yml):
# dilated ResNet-50 (output stride 16) + FCN head (dilation 6), whole network fine-tuned on trainaug (10,582 images),
# scored on val at full resolution; SGD lr 0.003, x0.1 after epochs 30 and 40, 45 epochs, batch 16 on ONE GPU (as the
# reference's single_gpu.py); five runs, seeds 0-4, reported as mean and std (docs/segmentation.md).
# Usage: sbatch scripts/segmentation_voc.sh   (DATASET_PATH=... PRETRAINED=... EXPERIMENT_PATH=... to override)
# Pre-emption: SIGUSR1 (120 s before the limit) or SIGTERM saves a checkpoint; the job requeues and resumes, finished
# runs are not redone.
#SBATCH --job-name=segmentation_voc
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/pascal}   # holds VOCdevkit/VOC2012 with SegmentationClassAug and trainaug.txt
PRETRAINED=${PRETRAINED:-./runs/moco_coco_800ep/checkpoint.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/segmentation_voc}
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
  --recipe voc \
  --pretrained "$PRETRAINED" \
  --arch resnet50 \
  --train_split trainaug \
  --val_split val \
  --crop_size 512 \
  --test_size 512 \
  --scales 0.75 1.25 \
  --max_rotation 5 \
  --head_dilation 6 \
  --epochs 45 \
  --batch_size 16 \
  --optimizer sgd \
  --lr 0.003 \
  --momentum 0.9 \
  --nesterov False \
  --wd 0.0001 \
  --scheduler step \
  --lr_decay_epochs 30 40 \
  --lr_decay_rate 0.1 \
  --test_batch_size 16 \
  --eval_every 1 \
  --report best \
  --seed 0 \
  --runs 5 \
  --workers 8 \
  --print_freq 100 \
  --output_dir "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
