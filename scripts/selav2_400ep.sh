#!/bin/bash
# SeLa-v2, ResNet-50, 400 epochs, batch 4096, 2x160 + 4x96 (paper: 71.8 linear top-1; no released training code: docs/sela.md).
# The DeepCluster-v2 recipe of the same crops with SeLa-v2's labels (swav issue #59); every flag written out;
# only the launcher lines differ (srun reads SLURM_* in src/run/dist.py). Usage: sbatch scripts/selav2_400ep.sh
#SBATCH --job-name=selav2_400ep
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --mem=450G
#SBATCH --time=25:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/selav2_400ep}
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
srun --kill-on-bad-exit=1 python -u main_deepclusterv2.py \
  --data_path "$DATASET_PATH" \
  --mode sela \
  --nmb_crops 2 4 \
  --size_crops 160 96 \
  --min_scale_crops 0.08 0.05 \
  --max_scale_crops 1. 0.14 \
  --crops_for_assign 0 1 \
  --blur_scale 1 \
  --temperature 0.1 \
  --feat_dim 128 \
  --nmb_prototypes 3000 3000 3000 \
  --epsilon 0.05 \
  --sinkhorn_iterations 1000 \
  --sinkhorn_tolerance 0.001 \
  --sela_rounding balanced \
  --epochs 400 \
  --batch_size 64 \
  --base_lr 4.8 \
  --final_lr 0.0048 \
  --freeze_prototypes_niters 313 \
  --wd 0.000001 \
  --warmup_epochs 10 \
  --start_warmup 0.3 \
  --arch resnet50 \
  --hidden_mlp 2048 \
  --sync_bn apex \
  --syncbn_process_group_size 8 \
  --workers 10 \
  --dump_path "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
