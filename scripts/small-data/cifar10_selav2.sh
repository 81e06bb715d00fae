#!/bin/bash
# SeLa-v2 on CIFAR-10 (32 px), one GPU, plain python (no launcher); the online kNN monitor and the
# online linear probe score the run on CIFAR-10's labelled train / test split while it trains.
# SeLa-v2 = the DeepCluster-v2 recipe below with the label step changed (our choice: no peer publishes a small-data
# SeLa-v2): Sinkhorn labels over the memory bank instead of k-means, learned prototypes frozen for the first epoch, as
# facebookresearch/swav's selav2 scripts (313 iterations = 1 epoch at batch 4096). Values: vturrisi/solo-learn
# scripts/pretrain/cifar/deepclusterv2.yaml (and its .sh at vturrisi/solo-learn@be3de80): ResNet-18 (CIFAR stem), 2 x
# 32 px crops, 3 heads of 3000 prototypes, LARS lr 0.6 -> 0.0006 with 11 warmup epochs from 0, wd 1e-6, batch 256,
# 1000 epochs, fp16; online linear lr 0.1. solo-learn's config serves CIFAR-10 and CIFAR-100 alike ("change here for
# cifar100").
# Where a peer setting has no flag here, and why our values differ: docs/small-data.md.
set -euo pipefail
DATA=${DATA:-/path/to/cifar10}  # holds cifar-10-batches-py/ (cifar-10-python.tar.gz extracted)
OUTPUT=${OUTPUT:-./runs/small-data/cifar10_selav2}
mkdir -p "$OUTPUT"

python -u main_deepclusterv2.py \
  --data_path "$DATA" \
  --mode sela \
  --nmb_crops 2 \
  --size_crops 32 \
  --min_scale_crops 0.08 \
  --max_scale_crops 1.0 \
  --use_pil_blur true \
  --blur_scale relative \
  --crops_for_assign 0 1 \
  --temperature 0.1 \
  --feat_dim 128 \
  --nmb_prototypes 3000 3000 3000 \
  --epsilon 0.05 \
  --sinkhorn_iterations 1000 \
  --sinkhorn_tolerance 0.001 \
  --sela_rounding balanced \
  --epochs 1000 \
  --batch_size 256 \
  --base_lr 0.6 \
  --final_lr 0.0006 \
  --freeze_prototypes_niters 195 \
  --wd 0.000001 \
  --warmup_epochs 11 \
  --start_warmup 0 \
  --arch resnet18 \
  --cifar_stem \
  --hidden_mlp 2048 \
  --sync_bn pytorch \
  --use_fp16 true \
  --seed 31 \
  --workers 8 \
  --checkpoint_freq 50 \
  --monitor_data "$DATA" \
  --monitor_every 10 \
  --monitor_resize 32 \
  --monitor_crop 32 \
  --online_linear \
  --online_linear_lr 0.1 \
  --dump_path "$OUTPUT"
