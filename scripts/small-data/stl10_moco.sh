#!/bin/bash
# MoCo v2 on STL-10 (96 px), one GPU, plain python (no launcher); the online kNN monitor and the
# online linear probe score the run on STL-10's labelled train / test split while it trains.
# Values: vturrisi/solo-learn scripts/pretrain/imagenet-100/mocov2plus.yaml (MoCo V2+, ResNet-18, 400 epochs, batch 2
# x 128 = 256, SGD lr 0.3, wd 1e-4, K 65536, T 0.2, m 0.99, 256-d MLP head, RandomResizedCrop scale 0.08-1, MoCo v2's
# jitter, blur p 0.5, fp16; online linear lr 0.3). solo-learn publishes no STL-10 config: its ImageNet-100 values at
# 96 px are our choice; pretraining on train+unlabeled (105,000 images) as solo-learn's STL-10 loader does.
# Where a peer setting has no flag here, and why our values differ: docs/small-data.md.
set -euo pipefail
DATA=${DATA:-/path/to/stl10}  # holds stl10_binary/ (stl10_binary.tar.gz extracted)
OUTPUT=${OUTPUT:-./runs/small-data/stl10_moco}
mkdir -p "$OUTPUT"

python -u main_moco.py \
  "$DATA" \
  --arch resnet18 \
  --epochs 400 \
  --batch-size 256 \
  --lr 0.3 \
  --cos \
  --momentum 0.9 \
  --weight-decay 1e-4 \
  --moco-dim 256 \
  --moco-k 65536 \
  --moco-m 0.99 \
  --moco-t 0.2 \
  --mlp \
  --bn-splits 8 \
  --crop-size 96 \
  --min-scale 0.08 \
  --aug-plus \
  --gaussian-blur 0.5 \
  --grey-scale 0.2 \
  --amp fp16 \
  --seed 0 \
  --workers 8 \
  --save-freq 50 \
  --monitor-data "$DATA" \
  --monitor-every 10 \
  --monitor-resize 96 \
  --monitor-crop 96 \
  --online-linear \
  --online-linear-lr 0.3 \
  --output-dir "$OUTPUT"
