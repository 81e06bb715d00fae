"""scripts/video_*.sh: every sbatch recipe parses with its script's own flag parser, passes its checks, and carries
the paper's values (video SCE recipes, linear, fine-tuning, retrieval)."""
import argparse
import glob
import os
import shlex

import pytest

import eval_linear
import main_sce
import main_transfer
from eval import retrieval
from tests.helpers import ROOT

ENV = {"$DATASET_PATH": "/data", "$EXPERIMENT_PATH": "/out", "$PRETRAINED": "/ckpt.pth", "$SPLITS_PATH": "/splits",
       "$SPLIT_ID": "1"}
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "video_*.sh")))


def command(path):
    """(program, argv) of the srun line, with the script's variables replaced by fixed values."""
    text = open(path).read()
    assert text.startswith("#!/bin/bash\n"), path
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    line = text.split("srun --kill-on-bad-exit=1 python -u ", 1)[1].split(" &\n", 1)[0].replace("\\\n", " ")
    words = shlex.split(line)
    prog, argv = (words[1], words[2:]) if words[0] == "-m" else (words[0], words[1:])
    out = []
    for a in argv:
        for k, v in ENV.items():
            a = a.replace(k, v)
        out.append(a)
    return prog, out


def test_the_recipe_set_is_complete():
    names = {os.path.basename(p) for p in SCRIPTS}
    assert {"video_sce_r3d18_k200.sh", "video_sce_r3d50_k400_8f.sh", "video_sce_r3d50_k400_16f.sh",
            "video_linear_r3d18_k200.sh", "video_linear_r3d50_k400_8f.sh", "video_linear_r3d50_k400_16f.sh",
            "video_finetune_ucf101_8f.sh", "video_finetune_hmdb51_8f.sh", "video_finetune_ucf101_16f.sh",
            "video_finetune_hmdb51_16f.sh", "video_retrieval_ucf101_8f.sh", "video_retrieval_hmdb51_8f.sh",
            "video_retrieval_ucf101_16f.sh", "video_retrieval_hmdb51_16f.sh"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_script_flags_parse_with_the_spec_values(path):
    name = os.path.basename(path)
    text = open(path).read()
    gpus = int(text.split("--nodes=")[1].split()[0]) * int(text.split("--ntasks-per-node=")[1].split()[0])
    prog, argv = command(path)
    frames = 16 if "16f" in name else 8
    if name.startswith("video_sce_"):
        assert prog == "main_sce.py"
        args = main_sce.parse_args(argv)
        main_sce.check_args(args)
        assert args.modality == "video" and args.batch_size * gpus == 512 and args.num_frames == frames
        assert (args.base_lr, args.warmup_epochs, args.epochs, args.wd, args.lars_momentum) == (2.4, 35, 200, 1e-6, 0.9)
        assert (args.temperature, args.temperature_m, args.coeff, args.momentum_start) == (0.1, 0.05, 0.5, 0.99)
        assert (args.min_scale_crops, args.max_scale_crops, args.size_crops, args.nmb_crops) == \
            ([0.2], [0.766], [224], [2])
        assert (args.temporal_diff_prob, args.clip_duration, args.blur_prob[:2], args.solarize_prob[:2]) == \
            (0.2, 2.56, [1.0, 0.1], [0.0, 0.2])
        assert args.use_fp16 and args.sync_bn and not args.mutual_pass
        r18 = "r3d18" in name
        assert (args.arch, args.queue_size, args.proj_hidden_dim) == (("r3d18", 32768, 1024) if r18 else
                                                                      ("r3d50", 65536, 4096))
        assert main_sce.given_dests(main_sce.get_args_parser(), argv) >= set(main_sce.VIDEO_DEFAULTS)  # all explicit
    elif name.startswith("video_linear_"):
        assert prog == "eval_linear.py"
        args = argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args(argv)
        eval_linear.apply_protocol(args)
        assert (args.protocol, args.modality, args.num_frames, args.batch_size, args.lr) == \
            ("video", "video", frames, 512, 4.0)
        assert (args.epochs, args.warmup_epochs, args.weight_decay, args.momentum, args.scheduler_type) == \
            (60, 8, 0.0, 0.9, "cosine_iter")
        assert (args.resize, args.crop_size, args.test_clips, args.test_crops) == (256, 224, 10, 3)
    elif name.startswith("video_finetune_"):
        assert prog == "main_transfer.py"
        args = argparse.ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args(argv)
        main_transfer.fill_recipe(args)
        assert args.finetune and args.modality == "video" and args.dataset in name and args.num_frames == frames
        assert (args.batch_size, args.lr, args.epochs, args.weight_decay, args.momentum) == (64, 0.025, 200, 0.0, 0.9)
        assert (args.resize, args.crop_size, args.test_clips, args.test_crops, args.split_id) == (256, 224, 10, 3, 1)
        assert args.frames_fps == (25 if "ucf101" in name else 30)
    else:
        assert prog == "eval.retrieval" and gpus == 1
        args = argparse.ArgumentParser(parents=[retrieval.get_args_parser()]).parse_args(argv)
        assert (args.modality, args.num_frames, args.resize, args.test_clips, args.test_crops) == \
            ("video", frames, 256, 10, 3)
        assert args.ks == [1, 5, 10, 15, 20, 25] and args.frames_fps == (25 if "ucf101" in name else 30)
