#!/bin/bash
# Many-shot linear transfer of a frozen ResNet-50 trunk on SCE's 11 datasets (Food101, CIFAR10, CIFAR100, SUN397,
# Cars, Aircraft, VOC2007, DTD, Pets, Caltech101, Flowers), the protocol of ssl-transfer's linear.py (Ericsson et
# al., CVPR 2021) that SCE's transfer table used: Resize 224 bicubic + CenterCrop 224 features, L-BFGS logistic
# regression, C searched over 1 / logspace(-6, 5, 45) on val, refit on train + val (docs/linear-transfer.md).
# One GPU extracts the features (cached in $EXPERIMENT_PATH/features/<weights hash>/); the C search runs on the
# CPU cores (scikit-learn, float64), so ask for many.
# Usage: sbatch scripts/linear_transfer_11.sh   (DATA_ROOT=... PRETRAINED=... EXPERIMENT_PATH=... to override)
# A resubmitted job reuses the cached features and redoes the searches. --C_grid is left at its default, the
# reference grid itself (45 values, 1e6 down to 1e-5); --no_norm stays off (ImageNet normalisation).
#SBATCH --job-name=linear_transfer_11
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-/path/to/transfer_datasets}
PRETRAINED=${PRETRAINED:-./runs/sce_multicrop_200ep/checkpoint.pth.tar}
EXPERIMENT_PATH=${EXPERIMENT_PATH:-./runs/linear_transfer_11}
mkdir -p "$EXPERIMENT_PATH"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-32}

python -u -m eval.linear_transfer \
  --data_root "$DATA_ROOT" \
  --datasets all \
  --pretrained "$PRETRAINED" \
  --arch resnet50 \
  --image_size 224 \
  --batch_size 64 \
  --workers 10 \
  --seed 0 \
  --max_iter 100 \
  --tol 1e-4 \
  --output_dir "$EXPERIMENT_PATH"
