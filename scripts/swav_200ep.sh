#!/bin/bash
# SwAV, ResNet-50, 200 epochs, batch 4096 (64 GPUs x 64), 2x224 + 6x96 (paper: 73.9 linear top-1).
# Every hyperparameter of the published recipe (facebookresearch/swav scripts/) is written out;
# only the launcher lines differ (srun reads SLURM_* in src/run/dist.py). Usage: sbatch scripts/swav_200ep.sh
#SBATCH --job-name=swav_200ep
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --mem=450G
#SBATCH --time=13:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/swav_200ep}
mkdir -p "$EXPERIMENT_PATH"
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-40000}

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
srun --kill-on-bad-exit=1 python -u main_swav.py \
  --data_path "$DATASET_PATH" \
  --nmb_crops 2 6 \
  --size_crops 224 96 \
  --min_scale_crops 0.14 0.05 \
  --max_scale_crops 1. 0.14 \
  --crops_for_assign 0 1 \
  --blur_scale 1 \
  --temperature 0.1 \
  --epsilon 0.05 \
  --sinkhorn_iterations 3 \
  --feat_dim 128 \
  --nmb_prototypes 3000 \
  --queue_length 0 \
  --epoch_queue_starts 15 \
  --epochs 200 \
  --batch_size 64 \
  --base_lr 4.8 \
  --final_lr 0.0048 \
  --freeze_prototypes_niters 313 \
  --wd 0.000001 \
  --warmup_epochs 10 \
  --start_warmup 0.3 \
  --arch resnet50 \
  --hidden_mlp 2048 \
  --use_fp16 true \
  --sync_bn apex \
  --syncbn_process_group_size 8 \
  --workers 10 \
  --dump_path "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
