#!/bin/bash
# DeepCluster-v2 on ImageNet-100 (224 px), one GPU, plain python (no launcher); the online kNN monitor and the
# online linear probe score the run on ImageNet-100's labelled train / test split while it trains.
# Values: vturrisi/solo-learn scripts/pretrain/imagenet-100/deepclusterv2.yaml (and its .sh at
# vturrisi/solo-learn@be3de80): ResNet-18, 2 x 224 px crops, 3 heads of 3000 prototypes, LARS lr 0.6 -> 0.0006 with 11
# warmup epochs from 0, wd 1e-6, batch 256, 400 epochs, fp16; online linear lr 0.1.
# Where a peer setting has no flag here, and why our values differ: docs/small-data.md.
set -euo pipefail
DATA=${DATA:-/path/to/imagenet100}  # holds train/ and val/ class folders (experiments.imagenet100)
OUTPUT=${OUTPUT:-./runs/small-data/imagenet100_deepclusterv2}
mkdir -p "$OUTPUT"

python -u main_deepclusterv2.py \
  --data_path "$DATA" \
  --mode deepcluster \
  --nmb_crops 2 \
  --size_crops 224 \
  --min_scale_crops 0.08 \
  --max_scale_crops 1.0 \
  --use_pil_blur true \
  --blur_scale 1 \
  --crops_for_assign 0 1 \
  --temperature 0.1 \
  --feat_dim 128 \
  --nmb_prototypes 3000 3000 3000 \
  --nmb_kmeans_iters 10 \
  --epochs 400 \
  --batch_size 256 \
  --base_lr 0.6 \
  --final_lr 0.0006 \
  --freeze_prototypes_niters 300000 \
  --wd 0.000001 \
  --warmup_epochs 11 \
  --start_warmup 0 \
  --arch resnet18 \
  --hidden_mlp 2048 \
  --sync_bn pytorch \
  --use_fp16 true \
  --seed 31 \
  --workers 16 \
  --checkpoint_freq 50 \
  --monitor_data "$DATA" \
  --monitor_every 10 \
  --monitor_resize 256 \
  --monitor_crop 224 \
  --online_linear \
  --online_linear_lr 0.1 \
  --dump_path "$OUTPUT"
