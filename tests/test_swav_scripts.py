"""Every SwAV / DeepCluster-v2 / SeLa-v2 sbatch recipe parses with its script's flags and carries the published
values (facebookresearch/swav scripts/*.sh and its README); shebang on line 1 and srun launch (STYLE rule 18)."""
import glob
import os
import shlex

import pytest

import main_deepclusterv2
import main_swav
from tests.helpers import ROOT

SCRIPTS = sorted(p for pattern in ("swav_*.sh", "deepclusterv2_*.sh", "selav2_*.sh")
                 for p in glob.glob(os.path.join(ROOT, "scripts", pattern)))

# name: (GPUs, per-GPU batch, nmb_crops, size_crops, min scales, queue, queue start, base/final lr, warmup, start,
#        freeze iters, sync_bn, epochs)
PUBLISHED = {
    "swav_100ep": (64, 64, [2, 6], [224, 96], [0.14, 0.05], 0, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 100),
    "swav_200ep": (64, 64, [2, 6], [224, 96], [0.14, 0.05], 0, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 200),
    "swav_400ep": (64, 64, [2, 6], [224, 96], [0.14, 0.05], 0, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 400),
    "swav_800ep": (64, 64, [2, 6], [224, 96], [0.14, 0.05], 0, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 800),
    "swav_200ep_bs256": (4, 64, [2, 6], [224, 96], [0.14, 0.05], 3840, 15, 0.6, 0.0006, 0, 0, 5005, "pytorch", 200),
    "swav_400ep_bs256": (4, 64, [2, 6], [224, 96], [0.14, 0.05], 3840, 15, 0.6, 0.0006, 0, 0, 5005, "pytorch", 400),
    "swav_400ep_2x224": (64, 64, [2], [224], [0.08], 0, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 400),
    "swav_RN50w2_400ep": (128, 32, [2, 4], [224, 96], [0.14, 0.05], 0, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 400),
    "swav_RN50w4_400ep": (64, 40, [2, 4], [224, 96], [0.08, 0.08], 2560, 0, 4.8, 0.0048, 10, 0.3, 313, "apex", 400),
    "deepclusterv2_800ep": (64, 64, [2, 6], [224, 96], [0.14, 0.05], None, None, 4.8, 0.0048, 10, 0.3, 300000, "apex",
                            800),
    "deepclusterv2_400ep": (64, 64, [2, 4], [160, 96], [0.08, 0.05], None, None, 4.8, 0.0048, 10, 0.3, 300000, "apex",
                            400),
    "deepclusterv2_400ep_2x224": (64, 64, [2], [224], [0.08], None, None, 4.8, 0.0048, 10, 0.3, 300000, "apex", 400),
    "selav2_400ep": (64, 64, [2, 4], [160, 96], [0.08, 0.05], None, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 400),
    "selav2_400ep_2x224": (64, 64, [2], [224], [0.08], None, None, 4.8, 0.0048, 10, 0.3, 313, "apex", 400),
}


def _parse(path):
    text = open(path).read()
    sbatch = dict(l[len("#SBATCH --"):].partition("=")[::2] for l in text.splitlines() if l.startswith("#SBATCH --"))
    cmd = shlex.split(text[text.index("srun "):].split(" &\n", 1)[0].replace("\\\n", " "), comments=True)
    script = next(c for c in cmd if c.startswith("main_"))
    argv = [a.replace('"$DATASET_PATH"', "/data").replace("$DATASET_PATH", "/data")
            .replace("$EXPERIMENT_PATH", "/exp") for a in cmd[cmd.index(script) + 1:]]
    module = main_swav if script == "main_swav.py" else main_deepclusterv2
    return text, sbatch, script, module.get_args_parser().parse_args(argv)


def test_every_row_of_the_table_has_a_script():
    assert sorted(os.path.basename(p)[:-3] for p in SCRIPTS) == sorted(PUBLISHED)


@pytest.mark.parametrize("path", SCRIPTS, ids=[os.path.basename(p) for p in SCRIPTS])
def test_script_matches_published_recipe(path):
    text, sbatch, script, a = _parse(path)
    name = os.path.basename(path)[:-3]
    gpus, bs, nmb, size, mins, queue, qstart, lr, final, warm, start, freeze, sbn, epochs = PUBLISHED[name]
    assert text.startswith("#!/bin/bash\n") and "srun " in text and "MASTER_ADDR=$(scontrol show hostnames" in text
    assert int(sbatch["nodes"]) * int(sbatch["ntasks-per-node"]) == gpus
    assert (a.batch_size, a.nmb_crops, a.size_crops, a.min_scale_crops) == (bs, nmb, size, mins)
    assert a.max_scale_crops == ([1.0, 0.14] if len(nmb) == 2 else [1.0])
    assert (a.base_lr, a.final_lr, a.warmup_epochs, a.start_warmup) == (lr, final, warm, start)
    assert (a.freeze_prototypes_niters, a.sync_bn, a.epochs, a.wd, a.crops_for_assign, a.temperature,
            a.feat_dim) == (freeze, sbn, epochs, 1e-6, [0, 1], 0.1, 128)
    if script == "main_swav.py":
        assert (a.epsilon, a.sinkhorn_iterations, a.nmb_prototypes, a.queue_length, a.use_fp16) == (0.05, 3, 3000,
                                                                                                   queue, True)
        if qstart is not None:
            assert a.epoch_queue_starts == qstart
        assert a.arch == {"swav_RN50w2_400ep": "resnet50w2", "swav_RN50w4_400ep": "resnet50w4"}.get(name, "resnet50")
        assert a.hidden_mlp == (8192 if "RN50w" in name else 2048)
    else:
        assert a.nmb_prototypes == [3000, 3000, 3000]
        assert a.mode == ("sela" if name.startswith("selav2") else "deepcluster")
