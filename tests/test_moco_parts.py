"""Queue FIFO, shuffle / split BN, momentum update, the MoCo model layout."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.methods.moco import MoCo, SplitBatchNorm, batch_shuffle, batch_unshuffle, convert_split_bn
from src.methods.momentum import KeyQueue, check_queue_size, copy_params, momentum_update
from src.run.errors import UserError


def test_queue_fifo_and_wraparound():
    q = KeyQueue(6, 2)
    for step in range(4):  # 4 steps of 3 keys in a queue of 6: rows cycle 0-2, 3-5, 0-2, 3-5
        keys = torch.full((3, 2), float(step))
        q.enqueue(keys)
    assert q.queue[:3].eq(2).all() and q.queue[3:].eq(3).all() and int(q.ptr) == 0
    q.enqueue(torch.full((3, 2), 9.0))
    assert q.queue[:3].eq(9).all() and q.queue[3:].eq(3).all() and int(q.ptr) == 3


def test_queue_initialised_unit_norm():
    q = KeyQueue(16, 8)
    torch.testing.assert_close(q.queue.norm(dim=1), torch.ones(16))


def test_queue_size_check_message():
    check_queue_size(4096, 256)
    with pytest.raises(UserError, match="not divisible"):
        check_queue_size(1000, 256)


def test_shuffle_unshuffle_restores_order_single_process():
    torch.manual_seed(0)
    x = torch.arange(8.0).view(8, 1)
    xs, idx = batch_shuffle(x)
    assert not torch.equal(xs, x) and sorted(xs.view(-1).tolist()) == x.view(-1).tolist()
    torch.testing.assert_close(batch_unshuffle(xs * 2, idx), x * 2)


def test_split_bn_equals_per_split_bn():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    sbn = SplitBatchNorm(3, 4)
    nn.init.uniform_(sbn.weight)
    nn.init.uniform_(sbn.bias)
    out = sbn(x)
    # split s holds samples s, s+4 (interleaved): compare with a plain BN on that sub-batch
    for s in range(4):
        idx = torch.tensor([s, s + 4])
        ref = F.batch_norm(x[idx], None, None, sbn.weight, sbn.bias, training=True, eps=sbn.eps)
        torch.testing.assert_close(out[idx], ref, rtol=1e-5, atol=1e-5)
    # running mean = mean over splits of the per-split updates = 0.1 * batch mean (from 0)
    torch.testing.assert_close(sbn.running_mean, 0.1 * x.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    sbn.eval()
    ref = F.batch_norm(x, sbn.running_mean, sbn.running_var, sbn.weight, sbn.bias, training=False, eps=sbn.eps)
    torch.testing.assert_close(sbn(x), ref)


def test_convert_split_bn_keeps_state_dict_layout():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    keys = list(net.state_dict())
    convert_split_bn(net, 2)
    assert isinstance(net[1], SplitBatchNorm) and list(net.state_dict()) == keys


def test_momentum_update_formula_and_copy():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    copy_params(a, b)
    assert all(not p.requires_grad for p in b.parameters())
    torch.testing.assert_close(b.weight, a.weight)
    with torch.no_grad():
        a.weight.add_(1.0)
    before = b.weight.clone()
    momentum_update(a, b, 0.9)
    torch.testing.assert_close(b.weight, 0.9 * before + 0.1 * a.weight)


def test_moco_layout_matches_released_checkpoints():
    model = MoCo("resnet18", dim=16, K=32, head="simple", bn_splits=2)
    keys = model.state_dict().keys()
    assert "encoder_q.conv1.weight" in keys and "encoder_q.fc.0.weight" in keys and "encoder_q.fc.2.weight" in keys
    assert "encoder_k.layer4.1.bn2.running_var" in keys and "queue.queue" in keys
    assert model.encoder_q.fc[0].in_features == 512 and model.encoder_q.fc[2].out_features == 16
    with torch.no_grad():
        k, _ = model.keys(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(k.norm(dim=1), torch.ones(4))


def test_moco_heads_and_mlp_flag():
    """--mlp alone is MoCo v2's MLP; --mlp KIND picks SSL-small's variants or the BN head; a folder after
    --mlp is still read as the dataset."""
    import torch

    from main_moco import get_args_parser, moco_head
    from src.models.heads import build_moco_head

    p = get_args_parser()
    assert moco_head(p.parse_args(["d"])) == "none"
    assert moco_head(p.parse_args(["d", "--mlp"])) == "simple"
    assert moco_head(p.parse_args(["d", "--mlp", "wide"])) == "wide"
    bn = build_moco_head("bn", 16, 8)
    out = bn.train()(torch.randn(32, 16) + 5.0)
    # the non-affine output BN removes any common direction: per-dimension batch mean 0, variance 1
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(8), atol=1e-3)
    assert [type(m).__name__ for m in build_moco_head("simple", 16, 8)] == ["Linear", "ReLU", "Linear"]


def test_resnet_tiny_layout_and_size():
    from src.models import build_backbone
    from src.models.resnet import build_resnet
    net, dim = build_backbone("resnet_tiny", cifar_stem=True)
    assert dim == 128 and net(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    # ResNet-10 layout at 16-32-64-128 channels: stem 3x3 conv + BN, one basic block per stage, 1x1 shortcuts
    # where the width changes (stages 2-4)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 4 * 2 + 3
    expected = 3 * 16 * 9 + 2 * (16 * 16 * 9) + 16 * 32 * 9 + 32 * 32 * 9 + 16 * 32 + 32 * 64 * 9 + 64 * 64 * 9 \
        + 32 * 64 + 64 * 128 * 9 + 128 * 128 * 9 + 64 * 128
    assert sum(c.weight.numel() for c in convs) == expected
    # the standard resnets are unchanged by the base-width option
    r18 = build_resnet("resnet18")
    assert sum(p.numel() for p in r18.parameters()) == 11176512
