"""src.evaluation.pretrained: every known checkpoint layout loads the same trunk; wrong files fail with one clear line."""
import argparse

import pytest
import torch
import torchvision

from src.evaluation.pretrained import checkpoint_arch, extract_trunk_state, load_trunk, read_checkpoint
from src.models import build_backbone
from src.run.errors import UserError


def _trunk(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    model, _ = build_backbone(arch)
    for m in model.modules():  # non-trivial BN statistics, so buffers are compared too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(seed + 7)
    return model


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def _mlp_head(prefix, dim=512):
    return {f"{prefix}fc.0.weight": torch.randn(dim, dim), f"{prefix}fc.0.bias": torch.randn(dim),
            f"{prefix}fc.2.weight": torch.randn(128, dim), f"{prefix}fc.2.bias": torch.randn(128)}


def _layouts(src, other):
    """name -> checkpoint dict holding ``src``'s trunk (and ``other``'s as a distractor where it fits)."""
    s, o = src.state_dict(), other.state_dict()
    queue = {"queue": torch.randn(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    tv = torchvision.models.resnet18()
    tv.load_state_dict({**s, "fc.weight": tv.fc.weight, "fc.bias": tv.fc.bias})
    return {
        "moco_official": {"epoch": 200, "arch": "resnet18", "optimizer": {},
                          "state_dict": {**_prefixed(s, "module.encoder_q."), **_mlp_head("module.encoder_q."),
                                         **_prefixed(o, "module.encoder_k."), **_mlp_head("module.encoder_k."),
                                         **_prefixed(queue, "module.")}},
        "swav_official": {**_prefixed(s, "module."), "module.projection_head.0.weight": torch.randn(2048, 512),
                          "module.projection_head.0.bias": torch.randn(2048),
                          "module.prototypes.weight": torch.randn(3000, 128)},
        "torchvision": tv.state_dict(),
        "ours_moco": {"arch": "resnet18", "epoch": 3, "args": {"arch": "resnet18", "cifar_stem": False},
                      "state_dict": {**_prefixed(s, "encoder_q."), **_mlp_head("encoder_q."),
                                     **_prefixed(o, "encoder_k."), **_mlp_head("encoder_k."), **queue}},
        "sce_like": {"state_dict": {**_prefixed(o, "momentum_backbone."), **_prefixed(s, "backbone."),
                                    "head.0.weight": torch.randn(4, 4)}},
        "dino_like": {"teacher": {**_prefixed(s, "backbone."), "head.last_layer.weight": torch.randn(3, 3)},
                      "student": _prefixed(o, "module.backbone."), "epoch": 1},
    }


@pytest.mark.parametrize("layout", ["moco_official", "swav_official", "torchvision", "ours_moco", "sce_like",
                                    "dino_like"])
def test_every_layout_loads_the_trunk(tmp_path, layout):
    src, other = _trunk(seed=1), _trunk(seed=2)
    path = tmp_path / f"{layout}.pth"
    torch.save(_layouts(src, other)[layout], path)
    dst = _trunk(seed=3)
    lines = []
    info = load_trunk(dst, str(path), log=lines.append, arch="resnet18")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert info["n_loaded"] == len(src.state_dict())
    assert len(lines) == 1 and lines[0].startswith(f"loaded {len(src.state_dict())} trunk tensors from {path} "
                                                    f"(prefix '{info['prefix']}')")
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(dst.eval()(x), src.eval()(x))


def test_prefix_and_ignored_keys():
    src = _trunk(seed=1)
    ckpt = _layouts(src, _trunk(seed=2))["moco_official"]
    state, prefix, ignored = extract_trunk_state(ckpt, set(src.state_dict()))
    assert prefix == "module.encoder_q."
    assert set(state) == set(src.state_dict())
    assert ignored[:4] == [f"module.encoder_q.fc.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
    assert "module.queue" in ignored and "module.encoder_k.conv1.weight" in ignored


def test_trunk_pattern_overrides_the_search(tmp_path):
    src = _trunk(seed=1)
    ckpt = {"model": {**_prefixed(src.state_dict(), "net.trunk."), **_prefixed(_trunk(seed=2).state_dict(), "")}}
    dst = _trunk(seed=3)
    info = load_trunk(dst, ckpt, trunk_pattern=r"^net\.trunk\.", log=None)
    assert info["prefix"] == r"^net\.trunk\."
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    with pytest.raises(UserError, match="not a valid regex"):
        load_trunk(dst, ckpt, trunk_pattern="(", log=None)


def test_old_checkpoint_without_num_batches_tracked():
    src = _trunk(seed=1)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = _trunk(seed=3)
    load_trunk(dst, {"state_dict": _prefixed(state, "module.")}, log=None)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in state.items())


def test_wrong_arch_names_a_key(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save({"arch": "resnet34", "state_dict": _prefixed(_trunk("resnet34").state_dict(), "module.encoder_q.")},
               path)
    with pytest.raises(UserError, match=r"arch 'resnet18'.*unexpected layer1\.2\..*-a/--arch.*'resnet34'"):
        load_trunk(_trunk("resnet18"), str(path), log=None, arch="resnet18")
    torch.save(_trunk("resnet18").state_dict(), path)
    with pytest.raises(UserError, match=r"missing layer1\.2\.conv1\.weight"):
        load_trunk(_trunk("resnet34"), str(path), log=None, arch="resnet34")
    torch.save(_trunk("resnet50").state_dict(), path)
    with pytest.raises(UserError, match=r"(shape mismatch|missing) layer1\.0\."):
        load_trunk(_trunk("resnet18"), str(path), log=None, arch="resnet18")
    with pytest.raises(UserError, match="no trunk weights"):
        load_trunk(_trunk("resnet18"), {"state_dict": {"foo.bar": torch.zeros(1)}}, log=None)


def test_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "ns.pth"
    src = _trunk(seed=1)
    torch.save({"args": argparse.Namespace(arch="resnet18", cifar_stem=True),
                "state_dict": _prefixed(src.state_dict(), "encoder_q.")}, path)
    with pytest.raises(UserError, match=r"argparse\.Namespace.*--trust-checkpoint"):
        read_checkpoint(path)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_trunk(_trunk(seed=3), str(path), log=None)
    ckpt = read_checkpoint(path, trust=True)
    assert checkpoint_arch(ckpt) == ("resnet18", True)
    dst = _trunk(seed=3)
    load_trunk(dst, str(path), trust=True, log=None)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(bad, trust=True)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": _trunk().state_dict()}, good)
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(bad)
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(UserError, match="not a dict"):
        read_checkpoint(bad)


def test_checkpoint_arch():
    assert checkpoint_arch({}) == (None, False)
    assert checkpoint_arch({"arch": "resnet50"}) == ("resnet50", False)
    assert checkpoint_arch({"args": {"arch": "resnet18", "cifar_stem": True}}) == ("resnet18", True)
