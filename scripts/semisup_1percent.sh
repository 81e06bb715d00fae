#!/bin/bash
# Semi-supervised evaluation: fine-tune a ResNet-50 on 1% of ImageNet's labels (SimCLR's subset, 12811 images,
# data_lists/imagenet_1percent.txt), 20 epochs, 8 GPUs x 32 = 256. Every hyperparameter of SwAV's README command
# (facebookresearch/swav, eval_semisup.py: --labels_perc 1 --lr 0.02 --lr_last_layer 5) and of its script's
# defaults is written out; only the launcher lines differ (srun reads SLURM_* in src/run/dist.py).
# Usage: sbatch scripts/semisup_1percent.sh   (DATASET_PATH=... PRETRAINED=... EXPERIMENT_PATH=... to override)
# The time limit is a generous guess, not a measurement.
#SBATCH --job-name=semisup_1percent
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --mem=450G
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
DATASET_PATH=${DATASET_PATH:-/path/to/imagenet}
PRETRAINED=${PRETRAINED:-/path/to/checkpoints/swav_800ep_pretrain.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/semisup_1percent}
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
srun --kill-on-bad-exit=1 python -u eval_semisup.py \
  --data_path "$DATASET_PATH" \
  --labels_perc 1 \
  --labels_file data_lists/imagenet_1percent.txt \
  --pretrained "$PRETRAINED" \
  --arch resnet50 \
  --epochs 20 \
  --batch_size 32 \
  --lr 0.02 \
  --lr_last_layer 5 \
  --decay_epochs 12 16 \
  --gamma 0.2 \
  --momentum 0.9 \
  --wd 0 \
  --crop_size 224 \
  --resize 256 \
  --seed 31 \
  --workers 10 \
  --print_freq 50 \
  --dump_path "$EXPERIMENT_PATH" &
RUN_PID=$!
wait "$RUN_PID"
