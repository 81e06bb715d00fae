"""SwAV's pieces: swapped loss vs loops, grouped forward, queue FIFO, frozen prototypes, LARC under AMP, guards."""
import math

import pytest
import torch
import torch.nn.functional as F

import main_swav
from src.losses import distributed_sinkhorn, swav_loss
from src.methods.swav import LossWatch, SwAVModel, SwAVQueue, code_entropies, resolution_groups
from src.optim import LARC
from src.run import dist
from src.run.errors import UserError
from src.run.health import Health
from tests.helpers import tiny_dataset

CPU = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False, backend=None,
                    launcher="none")


def _loop_swav_loss(scores, codes, crops_for_assign, n_crops, t):
    """The paper's formula, one scalar at a time (float64)."""
    B = codes[0].shape[0]
    total = 0.0
    for a, q in zip(crops_for_assign, codes):
        sub = 0.0
        for v in range(n_crops):
            if v == a:
                continue
            for b in range(B):
                row = scores[v * B + b]
                log_z = math.log(sum(math.exp(float(x) / t) for x in row))
                sub += -sum(float(q[b, k]) * (float(row[k]) / t - log_z) for k in range(row.shape[0])) / B
        total += sub / (n_crops - 1)
    return total / len(crops_for_assign)


def test_swapped_loss_matches_loops():
    g = torch.Generator().manual_seed(0)
    V, B, K = 5, 3, 6
    scores = torch.randn(V * B, K, generator=g, dtype=torch.float64).tanh()
    codes = [torch.softmax(torch.randn(B, K, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    for assign in ([0, 1], [0], [1, 3]):
        got = float(swav_loss(scores, codes[:len(assign)], assign, 0.1))
        assert abs(got - _loop_swav_loss(scores, codes, assign, V, 0.1)) < 1e-9


def test_swapped_loss_gradient_only_through_predictions():
    scores = torch.randn(4 * 2, 5).tanh().requires_grad_()
    codes = [distributed_sinkhorn(scores[:2]), distributed_sinkhorn(scores[2:4])]
    swav_loss(scores, codes, [0, 1], 0.1).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert not codes[0].requires_grad


def test_grouped_forward_is_crop_major_with_one_pass_per_resolution():
    torch.manual_seed(0)
    model = SwAVModel("resnet18", feat_dim=8, hidden_mlp=16, nmb_prototypes=5).eval()
    crops = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16) for _ in range(3)]
    assert resolution_groups(crops) == [(0, 2), (2, 5)]
    z, s = model(crops)
    assert z.shape == (10, 8) and s.shape == (10, 5)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(10))
    z1, _ = model([crops[3]])  # eval mode: crop 3 alone gives rows 6-7 of the grouped output
    torch.testing.assert_close(z[6:8], z1, rtol=1e-4, atol=1e-5)
    multi = SwAVModel("resnet18", feat_dim=8, hidden_mlp=0, nmb_prototypes=[4, 6])
    _, scores = multi(crops[:2])
    assert [tuple(x.shape) for x in scores] == [(4, 4), (4, 6)]
    assert "prototypes.1.weight" in multi.state_dict() and "prototypes.weight" in model.state_dict()


def test_queue_is_fifo_and_used_once_full():
    q = SwAVQueue(n_assign=2, length=6, dim=3, device="cpu")
    protos = F.normalize(torch.randn(4, 3), dim=1)
    batch = torch.zeros(2, 4)
    pushed = []
    for step in range(4):
        assert q.scores(0, batch, protos).shape == ((8, 4) if step >= 3 else (2, 4))  # full after 3 pushes of 2
        z = torch.full((2, 3), float(step + 1))
        z[1] += 0.5
        pushed.append(z)
        q.push(0, z)
        q.push(1, -z)
    # newest rows on top, oldest dropped: steps 4, 3, 2
    torch.testing.assert_close(q.queue[0], torch.cat([pushed[3], pushed[2], pushed[1]]))
    torch.testing.assert_close(q.queue[1], -q.queue[0])
    out = q.scores(1, batch, protos)  # queue rows scored with the current prototypes, batch rows last
    torch.testing.assert_close(out[:6], q.queue[1] @ protos.t())
    assert torch.equal(out[6:], batch)
    fresh = SwAVQueue(2, 6, 3, "cpu")
    fresh.load(q.queue.clone())  # a reloaded full queue is in use at once
    assert fresh.filled == 6 and fresh.scores(0, batch, protos).shape == (8, 4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("swav_parts") / "demo"), num_classes=2, train_per_class=8,
                        val_per_class=1, size=32)


def _parts(data, extra=()):
    """main_swav.build on the tiny flags: 16 images, 4 iterations per epoch of batch 4."""
    args = main_swav.get_args_parser().parse_args(
        ["--data_path", data, "--arch", "resnet18", "--hidden_mlp", "16", "--feat_dim", "8", "--nmb_prototypes", "6",
         "--batch_size", "4", "--size_crops", "32", "16", "--nmb_crops", "2", "1", "--min_scale_crops", "0.14", "0.05",
         "--max_scale_crops", "1", "0.14", "--base_lr", "0.5", "--wd", "0.1", "--warmup_epochs", "0", "--epochs", "1", "--print_freq", "1000", "--use_fp16", "false", "--workers", "0",
         *extra])
    return main_swav.build(args, CPU)


def _batches(n):
    """n loader batches ``(crops, labels)``: 2 crops of 32 px and one of 16 px, 4 images."""
    g = torch.Generator().manual_seed(1)
    return [([torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g),
              torch.randn(4, 3, 16, 16, generator=g)], torch.zeros(4)) for _ in range(n)]


def _steps(parts, n):
    """n calls of main_swav.step, in train mode, as train_one_epoch makes them."""
    parts.model.train()
    for it, batch in enumerate(_batches(n)):
        main_swav.step(parts, batch, it)
    return parts.model, parts.optimizer


def test_frozen_prototypes_unchanged_before_threshold(data):
    parts = _parts(data, ["--freeze_prototypes_niters", "3"])
    init_trunk = parts.model.backbone.conv1.weight.detach().clone()
    normalized = F.normalize(parts.model.prototypes.weight.detach(), dim=1)
    model, opt = _steps(parts, 3)
    torch.testing.assert_close(model.prototypes.weight.detach(), normalized, rtol=0, atol=1e-7)  # only renormalised
    assert model.prototypes.weight not in opt.state or "momentum_buffer" not in opt.state[model.prototypes.weight]
    assert not torch.equal(model.backbone.conv1.weight, init_trunk)  # everything else trained
    model2, opt2 = _steps(_parts(data, ["--freeze_prototypes_niters", "1"]), 3)
    assert not torch.allclose(model2.prototypes.weight, normalized, atol=1e-4)
    assert "momentum_buffer" in opt2.state[model2.prototypes.weight]


class _OrderedScaler(torch.amp.GradScaler):
    """A GradScaler that records the order of the step's calls to it."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *a, **k):
        self.calls.append("step")
        return super().step(optimizer, *a, **k)


def test_amp_scaler_unscales_before_larc(data, monkeypatch):
    """main_swav.step under a scaler with a huge scale: LARC's trust ratio sees the unscaled gradients, so the update
    is the unscaled run's, and the step unscales explicitly before the optimizer step."""
    seen = []  # gradient norms LARC sees when its step starts
    real_step = LARC.step

    def recording(self, closure=None):
        seen.append(torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"] if p.grad is not None]))
        return real_step(self, closure)

    monkeypatch.setattr(LARC, "step", recording)
    a = _parts(data, ["--freeze_prototypes_niters", "0"])
    b = _parts(data, ["--freeze_prototypes_niters", "0"])  # the same seed: the same initial weights
    b.scaler = _OrderedScaler("cpu", init_scale=2.0 ** 14, enabled=True)
    batch = _batches(1)[0]
    for parts in (a, b):
        parts.model.train()
        main_swav.step(parts, batch, 0)
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-4, atol=1e-6)  # not 2 ** 14 times larger
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)
    # GradScaler.step would unscale by itself; the step does it first, so that the gradients are the true ones
    # from there on (whatever reads them before the optimizer step)
    assert b.scaler.calls[:2] == ["unscale_", "step"], b.scaler.calls


def _verdict(health):
    health.verdict(health.flags().tolist(), 10, "lower --base_lr", "kept")


def test_loss_watch_nan_and_collapse():
    """The collapse guard is SwAV's (LossWatch); the NaN guard is the run loop's (src.run.health.Health)."""
    w, h = LossWatch(math.log(3000), torch.device("cpu")), Health(torch.device("cpu"))
    for step in range(5):
        w.update(torch.tensor(math.log(3000) + 0.01))
        h.update(torch.tensor(math.log(3000) + 0.01), step)
    _verdict(h)
    assert "collapse" in w.end_epoch()
    w.start_epoch()
    w.update(torch.tensor(7.0))
    assert w.end_epoch() is None
    h.update(torch.tensor(7.0), 5)
    h.update(torch.tensor(float("nan")), 6)
    with pytest.raises(UserError, match="NaN") as exc:
        _verdict(h)
    assert "epoch 0, iteration 7" in str(exc.value)
    scaled = Health(torch.device("cpu"), scaled=True)  # fp16: a skipped overflow step is not fatal
    scaled.update(torch.tensor(float("inf")), 0)
    scaled.update(torch.tensor(7.0), 1)
    _verdict(scaled)


def test_code_entropies():
    K = 10
    uniform = torch.full((4, K), 1 / K)
    onehot = F.one_hot(torch.arange(4) % K, K).float()
    h_avg, h_row = code_entropies(uniform)
    assert abs(float(h_avg) - math.log(K)) < 1e-5 and abs(float(h_row) - math.log(K)) < 1e-5
    h_avg, h_row = code_entropies(onehot)
    assert abs(float(h_avg) - math.log(4)) < 1e-5 and float(h_row) < 1e-5
