#!/bin/bash
# SCE, ResNet-50, 200 epochs, 2x224 + 192 + 160 + 128 + 96, ImageNet, 2 nodes x 8 GPUs x 256 = 4096
# (paper: 75.4 linear top-1). Six crops: global view 1 blur 1.0, view 2 blur 0.1 + solarize 0.2, locals blur 0.5 + solarize 0.2.
# Every hyperparameter of the released config is written out (juliendenize/eztorch
# configs/run/pretrain/sce/resnet50/resnet50_imagenet_five_crops.yaml; docs/sce.md).
# Usage: sbatch scripts/sce_multicrop_200ep.sh   (DATASET_PATH=/path/to/imagenet EXPERIMENT_PATH=... to override)
# Pre-emption: SIGUSR1 (600 s before the limit) or SIGTERM saves a checkpoint; resubmitting resumes it.
#SBATCH --job-name=sce_multicrop_200ep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=144:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/sce_multicrop_200ep}
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
srun --kill-on-bad-exit=1 python -u main_sce.py \
  --data_path "$DATASET_PATH" \
  --dump_path "$EXPERIMENT_PATH" \
  --arch resnet50 \
  --feat_dim 256 \
  --proj_hidden_dim 4096 \
  --pred_hidden_dim 4096 \
  --size_crops 224 192 160 128 96 \
  --nmb_crops 2 1 1 1 1 \
  --min_scale_crops 0.2 0.172 0.143 0.114 0.086 \
  --max_scale_crops 1.0 0.86 0.715 0.571 0.429 \
  --blur_prob 1.0 0.1 0.5 \
  --solarize_prob 0.0 0.2 0.2 \
  --mutual_pass false \
  --temperature 0.1 \
  --temperature_m 0.07 \
  --coeff 0.5 \
  --mask_positive false \
  --queue_size 65536 \
  --momentum_start 0.99 \
  --epochs 200 \
  --batch_size 256 \
  --base_lr 0.3 \
  --final_lr 0 \
  --warmup_epochs 10 \
  --start_warmup 0 \
  --wd 1e-6 \
  --lars_momentum 0.9 \
  --trust_coefficient 0.001 \
  --use_fp16 true \
  --sync_bn true \
  --seed 42 \
  --workers 10 \
  --checkpoint_freq 25 \
  --print_freq 50 &
RUN_PID=$!
wait "$RUN_PID"
