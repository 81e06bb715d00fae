"""experiments.convert-detectron2: a ResNet trunk from any checkpoint layout -> detectron2's weights pickle.

Checked against facts written here independently of the converter's code:
* detectron2's ResNet parameter names and shapes (``detectron2/modeling/backbone/resnet.py``:
  ``build_resnet_backbone`` -> ``BasicStem`` + stages ``res2``-``res5``; ``BottleneckBlock`` / ``BasicBlock`` define
  ``shortcut`` (when in != out channels), ``conv1``-``conv3``, each a ``Conv2d`` with a ``norm``; FrozenBatchNorm2d
  has weight, bias, running_mean, running_var), built below from the block counts and channel widths;
* the renaming as MoCo's ``detection/convert-pretrain-to-detectron2.py`` states it, a chain of substring
  replacements (the converter parses keys instead), used to pair every output array with its source tensor;
* the pickle read back by a restricted unpickler that resolves numpy's array globals only.
"""
import importlib
import io
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_ok, one_error_line, py, run

from src.methods.moco import MoCo
from src.methods.sce import SCE
from src.models import build_backbone
from src.run.checkpoint import save_checkpoint
from src.run.errors import UserError

convert = importlib.import_module("experiments.convert-detectron2")
pytestmark = pytest.mark.usefixtures("one_thread")

NORM = ("weight", "bias", "running_mean", "running_var")


def detectron2_resnet(depth):
    """{name: shape} of detectron2's ResNet-``depth`` backbone (default config: STEM_OUT_CHANNELS 64,
    RES2_OUT_CHANNELS 256 (64 for R18/R34), NUM_GROUPS 1, WIDTH_PER_GROUP 64), as its code builds it."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    out = {}

    def conv_with_norm(name, shape):
        out[f"{name}.weight"] = shape
        out.update({f"{name}.norm.{p}": (shape[0],) for p in NORM})

    conv_with_norm("stem.conv1", (64, 3, 7, 7))
    in_ch, out_ch, bottleneck = 64, (64 if depth < 50 else 256), 64
    for stage, n in enumerate(blocks):
        for b in range(n):
            block = f"res{stage + 2}.{b}"
            if in_ch != out_ch:
                conv_with_norm(f"{block}.shortcut", (out_ch, in_ch, 1, 1))
            if depth < 50:  # BasicBlock: two 3x3 convs
                conv_with_norm(f"{block}.conv1", (out_ch, in_ch, 3, 3))
                conv_with_norm(f"{block}.conv2", (out_ch, out_ch, 3, 3))
            else:  # BottleneckBlock: 1x1, 3x3, 1x1
                conv_with_norm(f"{block}.conv1", (bottleneck, in_ch, 1, 1))
                conv_with_norm(f"{block}.conv2", (bottleneck, bottleneck, 3, 3))
                conv_with_norm(f"{block}.conv3", (out_ch, bottleneck, 1, 1))
            in_ch = out_ch
        out_ch, bottleneck = out_ch * 2, bottleneck * 2
    return out


def reference_name(key):
    """MoCo's renaming, as substring replacements on a torchvision trunk key."""
    if "layer" not in key:
        key = "stem." + key
    for t in (1, 2, 3, 4):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype")}


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves numpy's array-rebuilding globals and nothing else; records what the file asked for."""

    def __init__(self, f):
        super().__init__(f, encoding="latin1")  # how detectron2's DetectionCheckpointer reads .pkl files
        self.asked = set()

    def find_class(self, module, name):
        self.asked.add((module, name))
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} refused")
        return super().find_class(module, name)


def read_restricted(path):
    with open(path, "rb") as f:
        u = ArrayOnlyUnpickler(f)
        return u.load(), u.asked


def torchvision_resnet(arch="resnet50", seed=0):
    """A torchvision model with seeded weights and non-trivial BN parameters / statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


def trunk_of(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("arch,depth,count", [("resnet50", 50, 265), ("resnet18", 18, 100)])
def test_names_and_shapes_are_detectron2s(arch, depth, count):
    out = convert.convert_state(trunk_of(torchvision_resnet(arch)))
    expected = detectron2_resnet(depth)
    assert len(expected) == count  # hand count: R50 5 + 16*15 + 4*5; R18 5 + 8*10 + 3*5
    assert {k: v.shape for k, v in out.items()} == expected
    assert all(v.dtype == np.float32 and v.flags["C_CONTIGUOUS"] for v in out.values())


def test_name_examples():
    assert convert.detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert convert.detectron2_name("layer1.0.downsample.1.bias") == "res2.0.shortcut.norm.bias"
    assert convert.detectron2_name("layer4.2.bn3.weight") == "res5.2.conv3.norm.weight"
    assert convert.detectron2_name("layer3.5.conv2.weight") == "res4.5.conv2.weight"
    for bad in ("fc.weight", "blocks.0.attn.qkv.weight", "layer5.0.conv1.weight", "layer1.0.bn4.weight"):
        with pytest.raises(UserError):
            convert.detectron2_name(bad)


def _layout_files(folder, model):
    """The same resnet50 trunk saved as: torchvision state dict, MoCo release, our MoCo and SCE checkpoints."""
    trunk, other = trunk_of(model), trunk_of(torchvision_resnet(seed=1))
    files = {"torchvision": os.path.join(folder, "tv.pth")}
    torch.save(model.state_dict(), files["torchvision"])  # fc.* classifier included
    mlp = {"fc.0.weight": torch.randn(2048, 2048), "fc.0.bias": torch.randn(2048),
           "fc.2.weight": torch.randn(128, 2048), "fc.2.bias": torch.randn(128)}
    release = {**{f"module.encoder_q.{k}": v for k, v in {**trunk, **mlp}.items()},
               **{f"module.encoder_k.{k}": v for k, v in {**other, **mlp}.items()},
               "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    files["moco release"] = os.path.join(folder, "moco_v2_800ep_pretrain.pth.tar")
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": release, "optimizer": {}}, files["moco release"])
    moco = MoCo(arch="resnet50", dim=128, K=16, head="simple")
    moco.encoder_q.load_state_dict(trunk, strict=False)  # its fc is the MLP head
    moco.encoder_k.load_state_dict(other, strict=False)  # a different momentum encoder must not be picked
    files["ours (MoCo)"] = os.path.join(folder, "moco", "checkpoint.pth.tar")
    save_checkpoint(files["ours (MoCo)"], {"arch": "resnet50", "epoch": 1, "args": {"arch": "resnet50"},
                                           "state_dict": moco.state_dict()})
    sce = SCE(arch="resnet50", dim=16, proj_hidden_dim=32, pred_hidden_dim=32, queue_size=16)
    sce.trunk.load_state_dict(trunk)
    sce.momentum_trunk.load_state_dict(other)
    files["ours (SCE)"] = os.path.join(folder, "sce", "checkpoint.pth.tar")
    save_checkpoint(files["ours (SCE)"], {"arch": "resnet50", "epoch": 1, "args": {"arch": "resnet50"},
                                          "state_dict": sce.state_dict()})
    return files


def test_layouts_give_the_same_arrays(tmp_path):
    model = torchvision_resnet()
    source = {reference_name(k): v.numpy() for k, v in trunk_of(model).items()
              if not k.endswith("num_batches_tracked")}
    for name, path in _layout_files(str(tmp_path), model).items():
        slug = re.sub(r"\W+", "_", name)
        out = str(tmp_path / f"{slug}.pkl")
        assert convert.main([path, out]) == out
        data, asked = read_restricted(out)
        assert set(data) == {"model", "__author__", "matching_heuristics"}, name
        assert data["matching_heuristics"] is True and isinstance(data["__author__"], str)
        assert data["model"].keys() == source.keys(), name
        for key, value in source.items():
            assert data["model"][key].dtype == np.float32 and np.array_equal(data["model"][key], value), (name, key)
        # arrays rebuilt by numpy 1's name, so numpy < 1.26.1 (no numpy._core) reads the file too
        assert asked == {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # atomic write cleaned up


def test_restricted_unpickler_refuses_other_globals():
    evil = pickle.dumps({"model": {}, "x": io.BytesIO})  # any class or function other than the array ones
    with pytest.raises(pickle.UnpicklingError, match="io._io.BytesIO|_io.BytesIO"):
        ArrayOnlyUnpickler(io.BytesIO(evil)).load()


def test_refuses_small_stem_and_wrong_suffix(tmp_path):
    trunk, _ = build_backbone("resnet18", cifar_stem=True)
    path = str(tmp_path / "cifar.pth.tar")
    save_checkpoint(path, {"arch": "resnet18", "args": {"arch": "resnet18", "cifar_stem": True},
                           "state_dict": {f"encoder_q.{k}": v for k, v in trunk.state_dict().items()}})
    with pytest.raises(UserError, match="3x3 stem"):
        convert.main([path, str(tmp_path / "out.pkl")])
    with pytest.raises(UserError, match=r"\.pkl"):
        convert.main([path, str(tmp_path / "out.pth")])
    assert sorted(os.listdir(tmp_path)) == ["cifar.pth.tar"]


def test_refuses_archs_detectron2_cannot_build(tmp_path):
    path = str(tmp_path / "tiny.pth")
    save_checkpoint(path, {"arch": "resnet_tiny", "state_dict": build_backbone("resnet_tiny")[0].state_dict()})
    with pytest.raises(UserError, match="no detectron2 counterpart"):  # one block per stage: no detectron2 depth
        convert.main([path, str(tmp_path / "tiny.pkl")])


def test_refuses_a_vit_without_recorded_arch(tmp_path):
    path = str(tmp_path / "vit.pth")
    torch.save(build_backbone("deit_tiny")[0].state_dict(), path)  # no arch in the file: resnet50 is tried
    with pytest.raises(UserError, match="no trunk weights for arch 'resnet50'.*only ResNet trunks convert"):
        convert.main([path, str(tmp_path / "vit.pkl")])


def test_configs_chain_and_name_the_registered_head():
    """The configs' _BASE_ files exist, the *_moco ones set what a torchvision trunk needs, and the box head the
    base config names is the one train_net.py registers (read as text: detectron2 is not installed here)."""
    folder = os.path.join(os.path.dirname(convert.__file__), "..", "detection")
    configs = {n: open(os.path.join(folder, "configs", n)).read() for n in os.listdir(os.path.join(folder, "configs"))}
    assert sorted(configs) == ["Base-RCNN-C4-BN.yaml", "coco_R_50_C4_2x.yaml", "coco_R_50_C4_2x_moco.yaml",
                               "pascal_voc_R_50_C4_24k.yaml", "pascal_voc_R_50_C4_24k_moco.yaml"]
    for name, text in configs.items():
        base = re.search(r'^_BASE_: "(.+)"$', text, re.M)
        assert (base is None) == (name == "Base-RCNN-C4-BN.yaml") and (base is None or base.group(1) in configs)
        if name.endswith("_moco.yaml"):
            assert base.group(1) == name.replace("_moco", "")
            for line in ("STRIDE_IN_1X1: False", 'FORMAT: "RGB"', "PIXEL_MEAN: [123.675, 116.280, 103.530]",
                         "PIXEL_STD: [58.395, 57.120, 57.375]"):
                assert line in text, (name, line)
    head = re.search(r'^\s+NAME: "(\w+)"$', configs["Base-RCNN-C4-BN.yaml"], re.M).group(1)
    train_net = open(os.path.join(folder, "train_net.py")).read()
    assert f"@ROI_HEADS_REGISTRY.register()\nclass {head}(Res5ROIHeads)" in train_net


def test_cli_prints_one_line(tmp_path):
    path, out = str(tmp_path / "r18.pth"), str(tmp_path / "det" / "r18.pkl")
    torch.save(torchvision_resnet("resnet18").state_dict(), path)
    proc = run(py("-m", "experiments.convert-detectron2", path, out, "-a", "resnet18"))
    assert_ok(proc)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 100 tensors ") and lines[0].endswith(f" to {out}"), lines
    data, _ = read_restricted(out)
    assert len(data["model"]) == 100


def _bad_inputs(folder):
    mobilenet, _ = build_backbone("mobilenetv3_small")
    save_checkpoint(os.path.join(folder, "mnv3.pth"), {"arch": "mobilenetv3_small",
                                                       "state_dict": mobilenet.state_dict()})
    open(os.path.join(folder, "empty.pth"), "wb").close()
    return {"mnv3.pth": "only ResNet", "empty.pth": "empty", "missing.pth": "does not exist"}


def test_cli_bad_input_one_error_line(tmp_path):
    for name, expect in _bad_inputs(str(tmp_path)).items():
        out = str(tmp_path / f"{name}.pkl")
        proc = run(py("-m", "experiments.convert-detectron2", str(tmp_path / name), out))
        assert proc.returncode == 2, (name, proc.stderr)
        assert expect in one_error_line(proc), (name, proc.stderr)
        assert not os.path.exists(out)
