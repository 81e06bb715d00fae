#!/bin/bash
# Linear evaluation of video SCE R3D-50 on Kinetics-400, 8 frames, 60 epochs, 8 GPUs, batch 512 (paper: 67.6).
# Frozen trunk in eval mode, Linear on the pooled feature; 1 random clip to train, 10 clips x 3 crops of 256 px to test
# (juliendenize/eztorch configs/run/evaluation/linear_classifier/sce/resnet3d50/resnet3d50_kinetics400.yaml; docs/video.md).
# Usage: sbatch scripts/video_linear_r3d50_k400_8f.sh   (DATASET_PATH=... PRETRAINED=... EXPERIMENT_PATH=... to override)
# Pre-emption: SIGUSR1 (600 s before the limit) or SIGTERM saves a checkpoint; resubmitting resumes it.
#SBATCH --job-name=video_linear_r3d50_k400_8f
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/kinetics400}
PRETRAINED=${PRETRAINED:-./runs/video_sce_r3d50_k400_8f/checkpoint.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/video_linear_r3d50_k400_8f}
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
srun --kill-on-bad-exit=1 python -u eval_linear.py \
  "$DATASET_PATH" \
  --modality video \
  --pretrained "$PRETRAINED" \
  --arch r3d50 \
  --trunk_pattern '^trunk\.' \
  --dump_path "$EXPERIMENT_PATH" \
  --protocol video \
  --num_frames 8 \
  --clip_duration 2.56 \
  --frames_fps 30 \
  --resize 256 \
  --crop_size 224 \
  --test_clips 10 \
  --test_crops 3 \
  --test_videos_per_batch 4 \
  --epochs 60 \
  --batch_size 512 \
  --lr 4.0 \
  --warmup_epochs 8 \
  --scheduler_type cosine_iter \
  --final_lr 0 \
  --wd 0 \
  --momentum 0.9 \
  --nesterov false \
  --seed 31 \
  --workers 10 \
  --print_freq 50 &
RUN_PID=$!
wait "$RUN_PID"
