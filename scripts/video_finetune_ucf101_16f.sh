#!/bin/bash
# Fine-tuning of video SCE R3D-50 (K400, 16 frames) on UCF101, 200 epochs, 8 GPUs x 8 = 64 (paper: 95.3).
# Whole network trained, head Dropout(0.8) -> Linear, SGD cosine per iteration, no warmup; official split files
# (juliendenize/eztorch configs/run/finetuning/resnet3d50/resnet3d50_ucf101_frame.yaml; docs/video.md).
# Usage: sbatch scripts/video_finetune_ucf101_16f.sh   (DATASET_PATH=... SPLITS_PATH=... SPLIT_ID=... PRETRAINED=... EXPERIMENT_PATH=... to override)
# Pre-emption: SIGUSR1 (600 s before the limit) or SIGTERM saves a checkpoint; resubmitting resumes it.
#SBATCH --job-name=video_finetune_ucf101_16f
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/UCF-101}
SPLITS_PATH=${SPLITS_PATH:-/path/to/ucfTrainTestlist}
SPLIT_ID=${SPLIT_ID:-1}
PRETRAINED=${PRETRAINED:-./runs/video_sce_r3d50_k400_16f/checkpoint.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/video_finetune_ucf101_16f}
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
srun --kill-on-bad-exit=1 python -u main_transfer.py \
  "$DATASET_PATH" \
  --modality video \
  --dataset ucf101 \
  --splits_dir "$SPLITS_PATH" \
  --split_id "$SPLIT_ID" \
  --finetune \
  --pretrained "$PRETRAINED" \
  --arch r3d50 \
  --trunk-pattern '^trunk\.' \
  --output-dir "$EXPERIMENT_PATH/split$SPLIT_ID" \
  --num_frames 16 \
  --clip_duration 2.56 \
  --frames_fps 25 \
  --resize 256 \
  --crop-size 224 \
  --test_clips 10 \
  --test_crops 3 \
  --test_videos_per_batch 4 \
  --epochs 200 \
  --batch-size 64 \
  --lr 0.025 \
  --momentum 0.9 \
  --wd 0 \
  --seed 0 \
  --workers 80 \
  --print-freq 50 &
RUN_PID=$!
wait "$RUN_PID"
