"""The official checkpoint layouts, built here from torchvision models, load into our trunk and compute the
same features as the torchvision model; a wrong layout fails with one clear ``error:`` line.

Layouts (docs/evaluation.md "Checkpoint layouts"):
* MoCo v1/v2 release: ``{"epoch", "arch", "state_dict": module.encoder_q.* (+ fc head), module.encoder_k.*,
  module.queue, module.queue_ptr, "optimizer"}``;
* SwAV release (torch.hub file): ``module.*`` + ``module.projection_head.*`` + ``module.prototypes.*``;
* SCE Lightning checkpoint (eztorch): ``state_dict`` with ``trunk.*``, ``momentum_trunk.*``, ``projector.*``,
  ``predictor.*``, ``momentum_projector.*``, ``queue``, next to Lightning's bookkeeping;
* SCE released trunk: the bare torchvision trunk dict (SCE's ``trunk_pattern=""``);
* SCE video-style wrapper ``trunk.model.*`` that needs ``--trunk_pattern '^(trunk\\.model\\.)'``;
* plain torchvision (``fc.*`` classifier).
"""
import pytest
import torch
import torchvision
from helpers import one_error_line, py, run
from PIL import Image

from src.evaluation.pretrained import add_pretrained_args, load_trunk, summarize_keys
from src.models import build_backbone
from src.run.errors import UserError


def _torchvision(arch="resnet18", seed=0):
    """A torchvision model with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


def _trunk_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _pre(prefix, state):
    return {prefix + k: v for k, v in state.items()}


class Hparams(dict):
    """Stands for Lightning's AttributeDict / Hydra's DictConfig: a pickled class, not plain data."""


def _layouts(src, other):
    s, o = _trunk_state(src), _trunk_state(other)
    mlp = {"fc.0.weight": torch.randn(512, 512), "fc.0.bias": torch.randn(512),
           "fc.2.weight": torch.randn(128, 512), "fc.2.bias": torch.randn(128)}
    proj = {"projector.0.weight": torch.randn(64, 512), "projector.1.weight": torch.ones(64),
            "projector.1.bias": torch.zeros(64), "projector.1.running_mean": torch.zeros(64),
            "projector.1.running_var": torch.ones(64), "projector.3.weight": torch.randn(32, 64)}
    lightning = {"epoch": 199, "global_step": 62400, "pytorch-lightning_version": "1.9.4",
                 "state_dict": {**_pre("trunk.", s), **_pre("momentum_trunk.", o), **proj,
                                **{"momentum_" + k: v for k, v in proj.items()},
                                "predictor.0.weight": torch.randn(64, 32), "predictor.2.weight": torch.randn(32, 64),
                                "queue": torch.randn(32, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)},
                 "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.8, "params": [0, 1]}]}],
                 "lr_schedulers": [{"last_epoch": 199}], "hparams_name": "kwargs",
                 "hyper_parameters": {"queue": {"size": 65536}, "temp": 0.1, "temp_m": 0.07}}
    return {
        "moco_v2": ({"epoch": 200, "arch": "resnet18", "optimizer": {"state": {}, "param_groups": []},
                     "state_dict": {**_pre("module.encoder_q.", {**s, **mlp}),
                                    **_pre("module.encoder_k.", {**o, **mlp}),
                                    "module.queue": torch.randn(128, 64),
                                    "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}, None),
        "moco_v1": ({"epoch": 200, "arch": "resnet18",
                     "state_dict": {**_pre("module.encoder_q.", s), "module.encoder_q.fc.weight": torch.randn(128, 512),
                                    "module.encoder_q.fc.bias": torch.randn(128), **_pre("module.encoder_k.", o),
                                    "module.queue": torch.randn(128, 64)}}, None),
        "swav": ({**_pre("module.", s), "module.projection_head.0.weight": torch.randn(64, 512),
                  "module.projection_head.0.bias": torch.randn(64), "module.prototypes.weight": torch.randn(30, 64)},
                 None),
        "sce_lightning": (lightning, None),
        "sce_lightning_pattern": (lightning, r"^(trunk\.)"),
        "sce_released": (dict(s), ""),
        "sce_video_wrapper": ({"state_dict": {**_pre("trunk.model.", s), "trunk.head.proj.weight": torch.randn(4, 4),
                                              **_pre("momentum_trunk.model.", o)}}, r"^(trunk\.model\.)"),
        "torchvision": (src.state_dict(), None),
    }


@pytest.fixture(scope="module")
def models():
    src, other = _torchvision(seed=1), _torchvision(seed=2)
    src.fc = torch.nn.Identity()
    return src, other


@pytest.mark.parametrize("layout", ["moco_v2", "moco_v1", "swav", "sce_lightning", "sce_lightning_pattern",
                                    "sce_released", "sce_video_wrapper", "torchvision"])
def test_official_layout_loads_and_matches_torchvision(tmp_path, models, layout):
    src, other = models
    ckpt, pattern = _layouts(src, other)[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(ckpt, path)
    torch.manual_seed(5)
    dst, _ = build_backbone("resnet18")
    lines = []
    info = load_trunk(dst, str(path), trunk_pattern=pattern, log=lines.append, arch="resnet18")
    assert info["n_loaded"] == len(dst.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src(x), rtol=1e-5, atol=1e-5)
    # one line naming what was used and, grouped, what was ignored
    assert len(lines) == 1 and "conv1, bn1, layer1, layer2, layer3, layer4" in lines[0], lines
    if layout.startswith("sce_lightning"):
        assert "ignored" in lines[0] and "momentum_trunk.* (" in lines[0] and "projector.* (" in lines[0], lines[0]
    if layout == "moco_v2":
        assert "module.encoder_q.fc.* (4)" in lines[0] and "module.encoder_k.* (" in lines[0], lines[0]


def test_video_wrapper_needs_the_pattern(models):
    ckpt, _ = _layouts(*models)["sce_video_wrapper"]
    dst, _ = build_backbone("resnet18")
    with pytest.raises(UserError, match="--trunk-pattern"):
        load_trunk(dst, ckpt, log=None, arch="resnet18")
    with pytest.raises(UserError, match="no trunk weights"):  # a pattern matching nothing
        load_trunk(dst, ckpt, trunk_pattern=r"^(student\.)", log=None, arch="resnet18")


def test_lightning_hparams_object_needs_trust(tmp_path, models):
    ckpt, _ = _layouts(*models)["sce_lightning"]
    ckpt["hyper_parameters"] = Hparams(temp=0.1)
    path = tmp_path / "lightning_obj.ckpt"
    torch.save(ckpt, path)
    dst, _ = build_backbone("resnet18")
    with pytest.raises(UserError, match=r"Hparams.*--trust-checkpoint"):
        load_trunk(dst, str(path), log=None)
    assert load_trunk(dst, str(path), trust=True, log=None)["prefix"] == "trunk."


def test_summarize_keys():
    keys = ["momentum_trunk.conv1.weight", "momentum_trunk.bn1.weight", "projector.0.weight", "queue",
            "module.encoder_k.conv1.weight", "module.encoder_k.fc.0.weight"]
    assert summarize_keys(keys) == "momentum_trunk.* (2), projector.* (1), queue, module.encoder_k.* (2)"
    mapping = {"fc.0.weight": "module.encoder_q.fc.0.weight", "fc.2.weight": "module.encoder_q.fc.2.weight"}
    assert summarize_keys(list(mapping.values()), mapping) == "module.encoder_q.fc.* (2)"
    assert summarize_keys([f"k{i}" for i in range(12)], max_groups=3) == "k0, k1, k2, ..."


def test_flags_in_both_spellings():
    import argparse

    parser = add_pretrained_args(argparse.ArgumentParser(), snake=True)
    a = parser.parse_args(["--trunk-pattern", "^x", "--trust_checkpoint", "--cifar_stem", "-a", "resnet18"])
    assert (a.trunk_pattern, a.trust_checkpoint, a.cifar_stem, a.arch) == ("^x", True, True, "resnet18")
    assert "--trunk_pattern" in parser.format_help()


def test_wrong_layout_is_one_error_line(tmp_path):
    """From the command line (eval_linear.py): one ``error:`` line naming the mismatch and the fix, exit 2."""
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(tmp_path / "data" / split / cls / "0.png")
    big = _torchvision("resnet50", seed=3)
    path = tmp_path / "moco_r50.pth.tar"
    torch.save({"arch": "resnet50", "state_dict": _pre("module.encoder_q.", _trunk_state(big))}, path)
    proc = run(py("eval_linear.py", str(tmp_path / "data"), "-a", "resnet18", "--pretrained", str(path),
                  "--dump_path", str(tmp_path / "out"), "-j", "0"))
    line = one_error_line(proc)
    assert proc.returncode == 2 and "do not match arch 'resnet18'" in line and "'resnet50'" in line, line
