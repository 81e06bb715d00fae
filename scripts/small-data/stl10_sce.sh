#!/bin/bash
# SCE on STL-10 (96 px), one GPU, plain python (no launcher); the online kNN monitor and the
# online linear probe score the run on STL-10's labelled train / test split while it trains.
# Values: the SCE authors' ImageNet config (juliendenize/eztorch
# eztorch/configs/run/pretrain/sce/resnet50/resnet50_imagenet.yaml) with a ResNet-18: 2 crops at scale 0.2-1, blur 1.0
# / 0.1, solarize 0 / 0.2, 4096-256 projector, 4096 predictor, queue 65536, T 0.1, T_m 0.07, lambda 0.5, momentum 0.99
# -> 1, LARS lr 0.3 per 256, trust coefficient 1e-3, wd 1e-6, 10 warmup epochs, fp16. The authors publish no
# ImageNet-100 / STL-10 config: batch 256 and 400 epochs (solo-learn's ImageNet-100 budget) are our choice.
# Pretraining on train+unlabeled (105,000 images) as solo-learn's STL-10 loader does.
# Where a peer setting has no flag here, and why our values differ: docs/small-data.md.
set -euo pipefail
DATA=${DATA:-/path/to/stl10}  # holds stl10_binary/ (stl10_binary.tar.gz extracted)
OUTPUT=${OUTPUT:-./runs/small-data/stl10_sce}
mkdir -p "$OUTPUT"

python -u main_sce.py \
  --data_path "$DATA" \
  --size_crops 96 \
  --nmb_crops 2 \
  --min_scale_crops 0.2 \
  --max_scale_crops 1.0 \
  --blur_prob 1.0 0.1 0.5 \
  --solarize_prob 0.0 0.2 0.2 \
  --arch resnet18 \
  --feat_dim 256 \
  --proj_hidden_dim 4096 \
  --pred_hidden_dim 4096 \
  --temperature 0.1 \
  --temperature_m 0.07 \
  --coeff 0.5 \
  --mask_positive false \
  --queue_size 65536 \
  --momentum_start 0.99 \
  --mutual_pass false \
  --epochs 400 \
  --batch_size 256 \
  --base_lr 0.3 \
  --final_lr 0 \
  --warmup_epochs 10 \
  --start_warmup 0 \
  --wd 0.000001 \
  --lars_momentum 0.9 \
  --trust_coefficient 0.001 \
  --sync_bn true \
  --use_fp16 true \
  --seed 42 \
  --workers 8 \
  --checkpoint_freq 50 \
  --monitor_data "$DATA" \
  --monitor_every 10 \
  --monitor_resize 96 \
  --monitor_crop 96 \
  --online_linear \
  --online_linear_lr 0.1 \
  --dump_path "$OUTPUT"
