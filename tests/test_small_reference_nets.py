"""SSL-small's small networks as its reference code builds them, and SEED checkpoints restarting in main_moco.

The key lists below are written from the reference code, independently of src/models: d-li14's
mobilenetv3.py (as vendored by WOWNICE/ssl-small and jacobswan1/SEED, last Linear named ``fc``),
lukemelas' EfficientNet-PyTorch v0.7 (``efficientnet-b0`` block strings, ``_fc`` renamed ``fc`` by
SSL-small / SEED) and SSL-small's ``architectures/vits/deit.py`` (``vit_tiny``). A SEED student
checkpoint is ``{"state_dict": {"module.student.<key>", "module.teacher.<key>", "module.queue", ...}}``
with the student built as ``arch(num_classes=128)`` (``fc`` a Linear, or Linear-ReLU-Linear with
``--student_mlp``).
"""
import importlib
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.evaluation.pretrained import load_trunk
from src.methods.moco import MoCo, load_for_restart
from src.models import build_backbone
from src.models.deit import Attention, Patchify
from src.models.efficientnet import Conv2dSame, drop_connect
from src.models.mobilenetv3 import SqueezeExcite
from src.run.errors import UserError
from tests.helpers import assert_ok, py, run

DIMS = {"mobilenetv3_small": 1024, "mobilenetv3_large": 1280, "efficientnet_b0": 1280, "deit_tiny": 192,
        "tv_mobilenetv3_small": 1024, "tv_mobilenetv3_large": 1280, "tv_efficientnet_b0": 1280, "vit_tiny": 192}


# ==== reference key lists (key -> shape, in state-dict order) ====
def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _div8(v):  # d-li14's _make_divisible(v, 8)
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


# d-li14 mobilenetv3.py cfgs: kernel, expansion t, channels c, SE, h-swish, stride
MBV3_CFG = {
    "large": [(3, 1, 16, 0, 0, 1), (3, 4, 24, 0, 0, 2), (3, 3, 24, 0, 0, 1), (5, 3, 40, 1, 0, 2),
              (5, 3, 40, 1, 0, 1), (5, 3, 40, 1, 0, 1), (3, 6, 80, 0, 1, 2), (3, 2.5, 80, 0, 1, 1),
              (3, 2.3, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1), (3, 6, 112, 1, 1, 1), (3, 6, 112, 1, 1, 1),
              (5, 6, 160, 1, 1, 2), (5, 6, 160, 1, 1, 1), (5, 6, 160, 1, 1, 1)],
    "small": [(3, 1, 16, 1, 0, 2), (3, 4.5, 24, 0, 0, 2), (3, 3.67, 24, 0, 0, 1), (5, 4, 40, 1, 1, 2),
              (5, 6, 40, 1, 1, 1), (5, 6, 40, 1, 1, 1), (5, 3, 48, 1, 1, 1), (5, 3, 48, 1, 1, 1),
              (5, 6, 96, 1, 1, 2), (5, 6, 96, 1, 1, 1), (5, 6, 96, 1, 1, 1)]}


def mbv3_keys(mode):
    keys = {"features.0.0.weight": (16, 3, 3, 3), **_bn("features.0.1", 16)}
    inp = 16
    for i, (k, t, c, se, _, _) in enumerate(MBV3_CFG[mode], 1):
        out, exp, p = _div8(c), _div8(inp * t), f"features.{i}.conv"
        sq = _div8(exp // 4)
        se_keys = lambda j: {f"{p}.{j}.fc.0.weight": (sq, exp), f"{p}.{j}.fc.0.bias": (sq,),  # noqa: E731
                             f"{p}.{j}.fc.2.weight": (exp, sq), f"{p}.{j}.fc.2.bias": (exp,)} if se else {}
        if inp == exp:  # dw(0) bn(1) act(2) se(3) pw(4) bn(5)
            keys.update({f"{p}.0.weight": (exp, 1, k, k), **_bn(f"{p}.1", exp), **se_keys(3),
                         f"{p}.4.weight": (out, exp, 1, 1), **_bn(f"{p}.5", out)})
        else:  # pw(0) bn(1) act(2) dw(3) bn(4) se(5) act(6) pw(7) bn(8)
            keys.update({f"{p}.0.weight": (exp, inp, 1, 1), **_bn(f"{p}.1", exp), f"{p}.3.weight": (exp, 1, k, k),
                         **_bn(f"{p}.4", exp), **se_keys(5), f"{p}.7.weight": (out, exp, 1, 1), **_bn(f"{p}.8", out)})
        inp = out
    dim = {"large": 1280, "small": 1024}[mode]
    keys.update({"conv.0.weight": (exp, inp, 1, 1), **_bn("conv.1", exp), "classifier.0.weight": (dim, exp),
                 "classifier.0.bias": (dim,)})
    return keys


# lukemelas utils.efficientnet(): 'r1_k3_s11_e1_i32_o16_se0.25', ..., 'r1_k3_s11_e6_i192_o320_se0.25'
B0_BLOCKS = [(1, 3, 1, 32, 16), (2, 3, 6, 16, 24), (2, 5, 6, 24, 40), (3, 3, 6, 40, 80), (3, 5, 6, 80, 112),
             (4, 5, 6, 112, 192), (1, 3, 6, 192, 320)]  # repeats, kernel, expansion, in, out


def effnet_b0_keys():
    keys = {"_conv_stem.weight": (32, 3, 3, 3), **_bn("_bn0", 32)}
    idx = 0
    for r, k, e, i, o in B0_BLOCKS:
        for j in range(r):
            inp = i if j == 0 else o
            mid, sq, p = inp * e, max(1, int(inp * 0.25)), f"_blocks.{idx}"
            if e != 1:
                keys.update({f"{p}._expand_conv.weight": (mid, inp, 1, 1), **_bn(f"{p}._bn0", mid)})
            keys.update({f"{p}._depthwise_conv.weight": (mid, 1, k, k), **_bn(f"{p}._bn1", mid),
                         f"{p}._se_reduce.weight": (sq, mid, 1, 1), f"{p}._se_reduce.bias": (sq,),
                         f"{p}._se_expand.weight": (mid, sq, 1, 1), f"{p}._se_expand.bias": (mid,),
                         f"{p}._project_conv.weight": (o, mid, 1, 1), **_bn(f"{p}._bn2", o)})
            idx += 1
    keys.update({"_conv_head.weight": (1280, 320, 1, 1), **_bn("_bn1", 1280)})
    return keys


def deit_keys():  # ssl-small vit_tiny: dim 192, depth 12, heads 6 x dim_head 64, mlp 768, 224 px / 16
    keys = {"pos_embedding": (1, 197, 192), "cls_token": (1, 1, 192), "to_patch_embedding.1.weight": (192, 768),
            "to_patch_embedding.1.bias": (192,)}
    for i in range(12):
        p = f"transformer.layers.{i}"
        keys.update({f"{p}.0.norm.weight": (192,), f"{p}.0.norm.bias": (192,), f"{p}.0.fn.to_qkv.weight": (1152, 192),
                     f"{p}.0.fn.to_out.0.weight": (192, 384), f"{p}.0.fn.to_out.0.bias": (192,),
                     f"{p}.1.norm.weight": (192,), f"{p}.1.norm.bias": (192,), f"{p}.1.fn.net.0.weight": (768, 192),
                     f"{p}.1.fn.net.0.bias": (768,), f"{p}.1.fn.net.3.weight": (192, 768),
                     f"{p}.1.fn.net.3.bias": (192,)})
    keys.update({"mlp_head.0.weight": (192,), "mlp_head.0.bias": (192,)})
    return keys


TRUNK_KEYS = {"mobilenetv3_small": lambda: mbv3_keys("small"), "mobilenetv3_large": lambda: mbv3_keys("large"),
              "efficientnet_b0": effnet_b0_keys, "deit_tiny": deit_keys}


def _n_params(keys):
    return sum(math.prod(s) for k, s in keys.items() if not re.search(r"running_|num_batches_tracked", k))


def _fc(dim, classes, mlp=False):
    if mlp:  # SEED --student_mlp: Linear(d, d) -> ReLU -> Linear(d, 128)
        return {"fc.0.weight": (dim, dim), "fc.0.bias": (dim,), "fc.2.weight": (classes, dim), "fc.2.bias": (classes,)}
    return {"fc.weight": (classes, dim), "fc.bias": (classes,)}


# With a 1000-way fc. d-li14 README table: MobileNetV3-Large 1.0 5.483M, -Small 1.0 2.543M; lukemelas README:
# efficientnet-b0 5.3M; SSL-small's DeiT-Tiny has no published figure (its trunk is "about 7.3M"). The exact
# integers are the counts of the key lists above (the reference code, run locally, gives the same).
REFERENCE_PARAMS = {"mobilenetv3_small": (2_542_856, 2.543, 3), "mobilenetv3_large": (5_483_032, 5.483, 3),
                    "efficientnet_b0": (5_288_548, 5.3, 1), "deit_tiny": (7_479_976, None, None)}


@pytest.mark.parametrize("arch", list(TRUNK_KEYS))
def test_trunk_has_the_reference_keys_shapes_and_parameter_count(arch):
    ref = TRUNK_KEYS[arch]()
    trunk, dim = build_backbone(arch)
    ours = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    assert list(ours) == list(ref) and ours == ref  # same names, order and shapes: loads key for key
    total, readme, digits = REFERENCE_PARAMS[arch]
    assert _n_params({**ref, **_fc(dim, 1000)}) == total
    assert sum(p.numel() for p in trunk.parameters()) + dim * 1000 + 1000 == total
    assert readme is None or round(total / 1e6, digits) == readme
    if arch == "deit_tiny":  # the random patch projection is frozen: 768 * 192 + 192 parameters not trained
        assert sum(p.numel() for p in trunk.parameters() if p.requires_grad) == 7_286_976 - 147_648
        assert [n for n, p in trunk.named_parameters() if not p.requires_grad] == [
            "to_patch_embedding.1.weight", "to_patch_embedding.1.bias"]


@pytest.mark.parametrize("arch", list(DIMS))
def test_forward_shapes_and_representation_dims(arch):
    torch.manual_seed(0)
    trunk, dim = build_backbone(arch, image_size=64)
    assert dim == DIMS[arch] == trunk.out_dim and isinstance(trunk.fc, nn.Identity)
    trunk.eval()
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, dim)
    if arch == "deit_tiny":
        with torch.no_grad():
            assert trunk(torch.randn(1, 3, 224, 224)).shape == (1, 192)
        for bad in (256, 40):
            with pytest.raises(UserError, match="deit_tiny takes images of at most 224 px"):
                build_backbone(arch, image_size=bad)


def test_mobilenetv3_se_before_activation_bn_defaults_and_init():
    torch.manual_seed(0)
    net, _ = build_backbone("mobilenetv3_large")
    expanded = [type(m).__name__ for m in net.features[4].conv]  # 5x5, t 3, SE, ReLU
    assert expanded == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "SqueezeExcite", "ReLU", "Conv2d",
                        "BatchNorm2d"]
    assert isinstance(net.features[7].conv[6], nn.Hardswish) and isinstance(net.features[7].conv[5], nn.Identity)
    small, _ = build_backbone("mobilenetv3_small")
    assert [type(m).__name__ for m in small.features[1].conv] == ["Conv2d", "BatchNorm2d", "ReLU", "SqueezeExcite",
                                                                 "Conv2d", "BatchNorm2d"]
    assert all((m.eps, m.momentum) == (1e-5, 0.1) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    w = net.conv[0].weight  # 1x1 conv 160 -> 960: N(0, sqrt(2 / (1 * 1 * 960)))
    assert w.std().item() == pytest.approx(math.sqrt(2 / 960), rel=0.02) and abs(w.mean().item()) < 1e-3
    lin = net.classifier[0]
    assert lin.weight.std().item() == pytest.approx(0.01, rel=0.02) and not lin.bias.any()
    # SE gate: x * hardsigmoid(W2 relu(W1 mean_hw(x))), against a float64 hand computation
    se = SqueezeExcite(16).double()
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    w1, b1, w2, b2 = se.fc[0].weight, se.fc[0].bias, se.fc[2].weight, se.fc[2].bias
    pooled = x.mean(dim=(2, 3))
    gate = torch.clamp((torch.relu(pooled @ w1.T + b1) @ w2.T + b2 + 3) / 6, 0, 1)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert w1.shape == (8, 16)  # make_divisible(16 // 4, 8)


def test_efficientnet_tf_same_padding_bn_constants_and_drop_connect():
    torch.manual_seed(0)
    # (input, kernel, stride, (before, after) padding): total max((ceil(in / s) - 1) * s + k - in, 0)
    cases = [(4, 3, 2, (0, 1)), (5, 3, 2, (1, 1)), (8, 5, 2, (1, 2)), (7, 5, 1, (2, 2)), (9, 1, 1, (0, 0))]
    for size, k, s, pads in cases:
        conv = Conv2dSame(2, 3, k, s)
        x = torch.randn(1, 2, size, size)
        expect = F.conv2d(F.pad(x, [pads[0], pads[1], pads[0], pads[1]]), conv.weight, conv.bias, s)
        assert expect.shape[-1] == math.ceil(size / s)
        torch.testing.assert_close(conv(x), expect)
    net, _ = build_backbone("efficientnet_b0")
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all((m.eps, m.momentum) == (1e-3, 0.01) for m in bns)
    assert sum(b.residual for b in net._blocks) == 9 and len(net._blocks) == 16
    assert net._dropout.p == 0.2
    x = torch.ones(4000, 1, 1, 1)
    y = drop_connect(x, 0.25, training=True)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 4 / 3))  # survivors rescaled by 1 / (1 - p)
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(drop_connect(x, 0.25, training=False), x)


def test_deit_patch_order_attention_position_slicing_and_init():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    out = Patchify(4)(x)  # (row, col, channel) within each patch, patches in raster order
    for b in range(2):
        for ph in range(2):
            for pw in range(2):
                for i in range(4):
                    for j in range(4):
                        for c in range(3):
                            assert out[b, ph * 2 + pw, (i * 4 + j) * 3 + c] == x[b, c, ph * 4 + i, pw * 4 + j]
    att = Attention(dim=8, heads=2, dim_head=3, dropout=0.0).double()
    t = torch.randn(2, 5, 8, dtype=torch.float64)
    qkv = t @ att.to_qkv.weight.T  # (2, 5, 18): q | k | v, each (head, dim_head)
    heads = []
    for h in range(2):
        q, k, v = (qkv[..., s * 6 + h * 3: s * 6 + h * 3 + 3] for s in range(3))
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(3), dim=-1) @ v)
    expect = torch.cat(heads, -1) @ att.to_out[0].weight.T + att.to_out[0].bias
    torch.testing.assert_close(att(t), expect)
    assert att.to_qkv.bias is None
    net, _ = build_backbone("deit_tiny", image_size=32)
    net.eval()
    img = torch.randn(2, 3, 32, 32)  # 4 patches: rows 0..4 of the 197-row table
    with torch.no_grad():
        before = net(img)
        net.pos_embedding[:, 5:] += 1.0
        torch.testing.assert_close(net(img), before)
        net.pos_embedding[:, 4] += 1.0
        assert not torch.allclose(net(img), before)
    fresh, _ = build_backbone("deit_tiny")
    assert fresh.pos_embedding.std().item() == pytest.approx(1.0, rel=0.03)
    assert [m.p for m in fresh.modules() if isinstance(m, nn.Dropout)] == [0.1] * 37  # embedding + 3 per block


# ==== SEED student checkpoints -> convert-seed -> main_moco --resume --restart ====
SEED_CASES = {  # arch -> (arch recorded by SEED / SSL-small, student fc with --student_mlp)
    "mobilenetv3_small": ("mobilenetv3_small", False), "mobilenetv3_large": ("mobilenetv3_large", True),
    "efficientnet_b0": ("efficientnet_b0", True), "deit_tiny": ("vit_tiny", False)}


def _seed_student_state(arch, mlp, seed):
    """Random tensors laid out as a SEED checkpoint's state dict: student (+ fc to 128), teacher, queue."""
    g = torch.Generator().manual_seed(seed)
    keys = TRUNK_KEYS[arch]()
    dim = DIMS[arch]
    keys.update(_fc(dim, 128, mlp))
    sd = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            sd[f"module.student.{k}"] = torch.tensor(1000)
        elif k.endswith("running_var"):
            sd[f"module.student.{k}"] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[f"module.student.{k}"] = torch.randn(shape, generator=g) * 0.05
    sd.update({"module.teacher.conv1.weight": torch.zeros(4, 3, 7, 7), "module.teacher.fc.weight": torch.zeros(128, 4),
               "module.queue": torch.randn(128, 64, generator=g), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return sd


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # the session's 4 classes x 12 images at 32 px (read only)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Four SEED files in one folder, converted by one ``experiments.convert-seed FOLDER`` call."""
    folder = tmp_path_factory.mktemp("distill_checkpoints")
    states = {}
    for n, (arch, (recorded, mlp)) in enumerate(SEED_CASES.items()):
        states[arch] = _seed_student_state(arch, mlp, n)
        torch.save({"epoch": 200, "arch": recorded, "state_dict": states[arch]}, folder / f"seed-ep200-{arch}.pth.tar")
    p = run(py("-m", "experiments.convert-seed", str(folder)))
    assert_ok(p)
    for arch in SEED_CASES:
        n_trunk = len(TRUNK_KEYS[arch]())
        assert f"all {n_trunk} tensors of our {arch} trunk present (restart with -a {arch})" in p.stdout
    return folder, states


@pytest.mark.parametrize("arch", list(SEED_CASES))
def test_seed_student_converts_and_restarts_with_every_trunk_tensor(arch, converted, data, tmp_path):
    folder, states = converted
    path = folder / f"converted_{arch}.pth.tar"
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert ck["arch"] == arch and ck["epoch"] == 200
    assert ck.get("source_arch") == ("vit_tiny" if arch == "deit_tiny" else None)
    sd, student = ck["state_dict"], states[arch]
    assert not any(k.startswith("module.teacher") for k in sd)
    trunk_keys = list(TRUNK_KEYS[arch]())
    for k in trunk_keys:
        assert torch.equal(sd[f"module.encoder_q.{k}"], student[f"module.student.{k}"]), k

    # in-process: the exact report of --restart (SSL-small's wide head, queue 32)
    model = MoCo(arch, dim=128, K=32, head="wide", image_size=32)
    report = load_for_restart(model, sd)
    trunk = {f"encoder_q.{k}" for k in trunk_keys}
    assert trunk <= set(report["loaded"]) and not trunk & set(report["missing"])
    assert not [k for k in report["ignored"] if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc")]
    assert all(k.startswith("encoder_q.fc.") for k, _, _ in report["mismatched"])
    for k in trunk_keys:
        torch.testing.assert_close(model.encoder_k.state_dict()[k], student[f"module.student.{k}"])

    # end to end: main_moco --resume --restart, one iteration on generated 32 px images
    p = run(py("main_moco.py", data, "-a", arch, "--mlp", "wide", "--moco-t", "0.1", "--moco-k", "32", "--lr", "0.06",
               "-b", "8", "-j", "1", "--crop-size", "32", "--bn-splits", "2", "--epochs", "1", "--max-iters", "1",
               "-p", "1", "--resume", str(path), "--restart", "--output-dir", str(tmp_path / "run")))
    assert_ok(p)
    assert "restarted from the weights of" in p.stdout and "Epoch: [0][1/6]" in p.stdout
    left = re.search(r"=> left at initialisation \((\d+)\): (.*)", p.stdout)
    listed = left.group(2).split(", ")
    assert int(left.group(1)) == len(listed) and "..." not in left.group(2)
    assert all(k.startswith(("encoder_q.fc.", "queue.")) for k in listed), listed  # head and queue only
    n_ignored = int(re.search(r"=> ignored (\d+) checkpoint tensors", p.stdout).group(1))
    # the student copies, SEED's queue + pointer, and the student fc keys the wide head does not have
    n_fc_unused = len([k for k in sd if k.startswith("module.encoder_q.fc.")
                       and k[len("module."):] not in model.state_dict()])
    assert n_ignored == len(trunk_keys) + len(_fc(1, 1, SEED_CASES[arch][1])) + 2 + n_fc_unused
    dropped = [l for l in p.stderr.splitlines() if l.startswith("warning: --restart dropped")]
    assert len(dropped) == int(SEED_CASES[arch][1])  # only the --student_mlp heads have other shapes
    for line in dropped:
        keys = re.findall(r"(encoder_[qk]\.\S+) \(", line)
        assert keys and all(k.startswith(("encoder_q.fc.", "encoder_k.fc.")) for k in keys), line


def test_convert_seed_refuses_a_student_that_does_not_fit(tmp_path):
    """A torchvision MobileNetV3 student recorded as mobilenetv3_small would restart from scratch: refused,
    naming the trunk it does fit; with --arch it converts. (In process: the CLI path is run above.)"""
    convert = importlib.import_module("experiments.convert-seed")
    tv, _ = build_backbone("tv_mobilenetv3_small")
    sd = {f"module.student.{k}": v for k, v in tv.state_dict().items()}
    torch.save({"arch": "mobilenetv3_small", "state_dict": sd}, tmp_path / "seed-tv.pth.tar")
    fits = r"does not fit our 'mobilenetv3_small' trunk .* pass --arch tv_mobilenetv3_small"
    with pytest.raises(UserError, match=fits):
        convert.main([str(tmp_path / "seed-tv.pth.tar")])
    assert not (tmp_path / "converted_tv.pth.tar").exists()
    convert.main([str(tmp_path / "seed-tv.pth.tar"), "--arch", "tv_mobilenetv3_small"])
    assert torch.load(tmp_path / "converted_tv.pth.tar", weights_only=True)["arch"] == "tv_mobilenetv3_small"


@pytest.mark.parametrize("arch", list(TRUNK_KEYS))
def test_ssl_small_released_moco_checkpoint_loads_into_the_trunk(arch):
    """SSL-small's released MoCo checkpoints (``module.encoder_q.*`` with its wide head) load strictly for
    evaluation: every trunk key is used and only the head is left over."""
    keys = {**TRUNK_KEYS[arch](), **{f"fc.{i}.{p}": None for i in (0, 2) for p in ("weight", "bias")}}
    trunk, _ = build_backbone(arch)
    own = trunk.state_dict()
    sd = {f"module.encoder_q.{k}": (own[k] + 1 if own[k].is_floating_point() else own[k]) if k in own
          else torch.zeros(3) for k in keys}
    info = load_trunk(trunk, {"state_dict": sd}, log=None)
    assert info["n_loaded"] == len(own) and sorted(info["ignored"]) == sorted(
        f"module.encoder_q.fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, sd[f"module.encoder_q.{k}"]), k
