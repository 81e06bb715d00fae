#!/bin/bash
# Retrieval with video SCE R3D-50 (K400, 16 frames) on HMDB51, 1 GPU (paper R@1: 45.9).
# Both splits through the 30-view test protocol, raw features averaged; each set centred by its own mean, cosine
# (juliendenize/eztorch configs/run/evaluation/feature_extractor/resnet3d50/resnet3d50_hmdb51_frame.yaml and
# retrieval_from_bank/default.yaml; docs/video.md).
# Usage: sbatch scripts/video_retrieval_hmdb51_16f.sh   (DATASET_PATH=... SPLITS_PATH=... SPLIT_ID=... PRETRAINED=... EXPERIMENT_PATH=... to override)
#SBATCH --job-name=video_retrieval_hmdb51_16f
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=10
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/hmdb51}
SPLITS_PATH=${SPLITS_PATH:-/path/to/testTrainMulti_7030_splits}
SPLIT_ID=${SPLIT_ID:-1}
PRETRAINED=${PRETRAINED:-./runs/video_sce_r3d50_k400_16f/checkpoint.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/video_retrieval_hmdb51_16f}
mkdir -p "$EXPERIMENT_PATH"
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}

srun --kill-on-bad-exit=1 python -u -m eval.retrieval \
  "$DATASET_PATH" \
  --modality video \
  --splits_dir "$SPLITS_PATH" \
  --split_id "$SPLIT_ID" \
  --pretrained "$PRETRAINED" \
  --arch r3d50 \
  --trunk_pattern '^trunk\.' \
  --output_dir "$EXPERIMENT_PATH/split$SPLIT_ID" \
  --num_frames 16 \
  --clip_duration 2.56 \
  --frames_fps 30 \
  --resize 256 \
  --test_clips 10 \
  --test_crops 3 \
  --batch_size 8 \
  --workers 10 \
  --ks 1 5 10 15 20 25
