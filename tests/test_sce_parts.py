"""SCE pieces: model layout (the reference's heads), per-crop vs grouped forwards, EMA on parameters only,
the asymmetric views, the torchvision trunk export, and AMP's skipped step on an fp16 overflow."""
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import main_sce
from src.augment.recipes import sce_recipe
from src.evaluation.pretrained import load_trunk
from src.methods.sce import SCE
from src.models import build_backbone
from src.run import dist

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


CPU = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False, backend=None,
                    launcher="none")


def _small(**kw):
    torch.manual_seed(0)
    return SCE("resnet18", dim=16, proj_hidden_dim=32, pred_hidden_dim=24, queue_size=32, **kw)


def test_layout_heads_and_initial_copy():
    model = _small()
    keys = model.state_dict().keys()
    assert {"trunk.conv1.weight", "momentum_trunk.layer4.1.bn2.running_var", "queue.queue", "queue.ptr"} <= set(keys)
    assert not any(k.startswith("momentum_predictor") for k in keys)  # the target branch has no predictor
    proj, pred = model.projector, model.predictor
    assert [type(m).__name__ for m in proj] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU",
                                                "Linear", "BatchNorm1d"]
    assert [type(m).__name__ for m in pred] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert all(m.bias is None for m in list(proj) + list(pred) if isinstance(m, nn.Linear))
    assert not proj[-1].affine and proj[1].affine
    assert (proj[0].in_features, proj[0].out_features, proj[6].out_features) == (512, 32, 16)
    assert (pred[0].in_features, pred[0].out_features, pred[3].out_features) == (16, 24, 16)
    for a, b in zip(model.trunk.state_dict().values(), model.momentum_trunk.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in model.momentum_trunk.parameters())
    assert len(model.online_params()) == len(list(model.trunk.parameters())) + len(list(proj.parameters())) + \
        len(list(pred.parameters()))
    torch.testing.assert_close(model.queue.queue.norm(dim=1), torch.ones(32))


def test_branch_outputs_unit_norm_and_mutual_pass_groups_same_resolution():
    model = _small().eval()  # eval: BN uses running stats, so grouping cannot change the outputs
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        sep, grouped = model.online_branch(False)(crops), model.online_branch(True)(crops)
        keys = model.target_branch()(crops[:2])
    assert len(sep) == 4 and len(keys) == 2 and all(t.shape == (2, 16) for t in sep + keys)
    for a, b in zip(sep, grouped):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sep[0].norm(dim=1), torch.ones(2))
    # in train mode each crop's forward has its own BN statistics: grouping changes the outputs
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model.online_branch(False)(crops)[0], model.online_branch(True)(crops)[0])


def test_momentum_update_parameters_only():
    model = _small()
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.add_(1.0)
        model.trunk.bn1.running_mean.add_(5.0)
    before = model.momentum_trunk.conv1.weight.clone()
    model.momentum_update(0.9)
    torch.testing.assert_close(model.momentum_trunk.conv1.weight, 0.9 * before + 0.1 * model.trunk.conv1.weight)
    assert torch.equal(model.momentum_trunk.bn1.running_mean, torch.zeros(64))  # buffers are not averaged


def test_views_order_sizes_and_asymmetric_probabilities():
    tf = sce_recipe([224, 192, 160, 128, 96], [2, 1, 1, 1, 1], [0.2, 0.172, 0.143, 0.114, 0.086],
                    [1.0, 0.86, 0.715, 0.571, 0.429]).per_image()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8))
    views = tf(img)
    assert [v.shape[-1] for v in views] == [224, 224, 192, 160, 128, 96]

    def probs(t):
        names = {type(op).__name__: op for op in t.transforms}
        blur = [op for op in t.transforms if type(op).__name__ == "RandomApply"
                and type(op.transforms[0]).__name__ == "GaussianBlur"]
        sol = names.get("RandomSolarize")
        return (blur[0].p if blur else 0.0, sol.p if sol else 0.0, blur[0].transforms[0].kernel_size if blur else None)

    got = [probs(t) for t in tf.transforms]
    assert got[0] == (1.0, 0.0, (23, 23)) and got[1] == (0.1, 0.2, (23, 23))
    assert all(g == (0.5, 0.2, (23, 23)) for g in got[2:])
    crop = tf.transforms[2].transforms[0]
    assert crop.scale == (0.172, 0.86) and crop.size == (192, 192)
    jitter = tf.transforms[0].transforms[1]
    assert jitter.p == 0.8 and jitter.transforms[0].saturation == (0.8, 1.2) and jitter.transforms[0].hue == (-0.1, 0.1)
    # small crops: blur scaled with the global crop size (kernel 3 at 32 px)
    small = sce_recipe([32], [2], [0.2], [1.0], blur_scale=32 / 224).per_image()
    assert probs(small.transforms[0])[2] == (3, 3)


def test_trunk_export_loads_into_torchvision_and_checkpoint_into_eval_trunk(tmp_path):
    model = SCE("resnet18", dim=16, proj_hidden_dim=32, pred_hidden_dim=32, queue_size=32)
    tv = torchvision.models.resnet18()
    res = tv.load_state_dict(model.trunk.state_dict(), strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    torch.testing.assert_close(tv.layer3[0].conv1.weight, model.trunk.layer3[0].conv1.weight)
    # a training checkpoint: eval tools pick the online trunk ("trunk."), never momentum_trunk
    with torch.no_grad():
        model.momentum_trunk.conv1.weight.zero_()
    ckpt = {"arch": "resnet18", "args": {"arch": "resnet18", "cifar_stem": False}, "state_dict": model.state_dict()}
    fresh, _ = build_backbone("resnet18")
    info = load_trunk(fresh, ckpt, log=None)
    assert info["prefix"] == "trunk." and info["arch"] == "resnet18"
    torch.testing.assert_close(fresh.conv1.weight, model.trunk.conv1.weight)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tiny_data):
    args = main_sce.get_args_parser().parse_args(
        ["--data_path", tiny_data, "--arch", "resnet18", "--batch_size", "4", "--queue_size", "32", "--feat_dim", "16",
         "--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--size_crops", "32", "--use_fp16", "true", "--workers",
         "0", "--seed", "0"])
    parts = main_sce.build(args, CPU)
    # fp16 autocast even on the CPU (build falls back to fp32 there), and a scale at which every fp16 gradient overflows
    parts.amp = torch.autocast("cpu", dtype=torch.float16)
    parts.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    parts.optimizer = torch.optim.SGD(parts.model.online_params(), lr=0.1)
    model = parts.model.train()
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batch = ([torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)], torch.zeros(4))
    main_sce.step(parts, batch, 0)
    assert parts.scaler.get_scale() == 2.0 ** 99  # overflow seen: scale halved
    for k, v in model.trunk.state_dict().items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(v, before[k]), k  # the optimizer step was skipped
    assert int(model.queue.ptr) == 8  # keys of both views are still enqueued


def test_sbatch_scripts_parse_and_match_the_released_configs():
    import glob
    import os
    import shlex

    from tests.helpers import ROOT

    seen = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "sce_*.sh"))):
        text = open(path).read()
        assert text.startswith("#!/bin/bash\n"), path
        cmd = text.split("main_sce.py", 1)[1].split(" &\n", 1)[0].replace("\\\n", " ")
        argv = [a.replace("$DATASET_PATH", "/data").replace("$EXPERIMENT_PATH", "/out") for a in shlex.split(cmd)]
        args = main_sce.get_args_parser().parse_args(argv)
        main_sce.check_args(args)
        seen[os.path.basename(path)] = args
        assert (args.temperature, args.temperature_m, args.coeff, args.queue_size) == (0.1, 0.07, 0.5, 65536)
    assert {"sce_100ep.sh", "sce_200ep.sh", "sce_300ep.sh", "sce_1000ep.sh", "sce_multicrop_200ep.sh",
            "sce_1gpu.sh"} <= set(seen)
    assert seen["sce_100ep.sh"].base_lr == 0.6 and seen["sce_1000ep.sh"].wd == 1.5e-6
    multi = seen["sce_multicrop_200ep.sh"]
    assert main_sce.crop_list(multi) == [224, 224, 192, 160, 128, 96] and multi.batch_size * 16 == 4096
