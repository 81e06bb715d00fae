"""MoCo revisited (Van Gansbeke et al. 2021): constrained multi-scale crops, AutoAugment per crop, the
multi-crop MoCo loss and the nearest-neighbour loss against loops, a 2-process gloo run on a flat folder."""
import copy
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import main_moco
from src.run import dist
from src.augment.crops import MultiScaleCrops, box_intersection, constrained_box, rrc_box
from src.augment.image import MultiCropTransform, autoaugment_or
from src.run.logging import ProgressLogger
from src.losses import knn_positive_loss
from src.optim import moco_lr_schedule
from tests.helpers import SYNC_RE, assert_ok, free_port, py, run, tiny_dataset

CPU = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False, backend=None,
                    launcher="none")


# ==== constrained crops ====
def _overlap_ok(box, key, min_overlap=0.1):
    """Accepted boxes share >= min_overlap x their TARGET area with the key; rounding each side to whole
    pixels moves it by at most half a pixel, so the target area is at least (h - 0.5) (w - 0.5)."""
    return box_intersection(box, key) >= min_overlap * (box[2] - 0.5) * (box[3] - 0.5)


def _inside(box, width, height):
    top, left, h, w = box
    return 0 <= top and 0 <= left and h > 0 and w > 0 and top + h <= height and left + w <= width


def test_box_intersection():
    assert box_intersection((0, 0, 10, 10), (5, 5, 10, 10)) == 25
    assert box_intersection((0, 0, 10, 10), (10, 0, 5, 5)) == 0
    assert box_intersection((2, 3, 4, 5), (0, 0, 100, 100)) == 20


def test_constrained_small_crops_overlap_the_key_crop_over_many_samples():
    """Property over 3,000 images of varied sizes and 1-7 small crops: every crop lies inside the image at
    its size; every accepted small crop overlaps the KEY crop (crop 1) by >= 10% of its area; nearly all are
    accepted, while unconstrained small crops miss the key far more often."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    accepted = fallback = free_hits = free_total = 0
    for i in range(3000):
        width, height = (int(v) for v in torch.randint(24, 700, (2,), generator=g))
        n_small = 1 + i % 7
        mc = MultiScaleCrops([160, 96], [2, n_small], [0.2, 0.05], [1.0, 0.14], constrained=True)
        boxes = mc.boxes(width, height)
        assert [s for _, s in boxes] == [160, 160] + [96] * n_small
        assert all(_inside(b, width, height) for b, _ in boxes)
        key = boxes[1][0]
        hits = sum(_overlap_ok(b, key) for b, _ in boxes[2:])
        assert hits >= mc.n_accepted  # every accepted crop satisfies the constraint (fallbacks may by chance)
        accepted, fallback = accepted + mc.n_accepted, fallback + mc.n_fallback
        free = MultiScaleCrops([160, 96], [2, n_small], [0.2, 0.05], [1.0, 0.14], constrained=False)
        fb = free.boxes(width, height)
        free_hits += sum(_overlap_ok(b, fb[1][0]) for b, _ in fb[2:])
        free_total += n_small
    assert accepted + fallback == sum(1 + i % 7 for i in range(3000))
    assert accepted / (accepted + fallback) > 0.95  # 96.6%: very elongated images make a few fall back
    assert free_hits / free_total < 0.95 * accepted / (accepted + fallback)


def test_constrained_box_falls_back_to_a_free_crop():
    """An impossible constraint (more overlap than the crop's own area) is never met: after 10 tries the
    box is an ordinary RandomResizedCrop box, inside the image and within the scale range."""
    torch.manual_seed(0)
    for _ in range(200):
        box, ok = constrained_box(400, 300, key_box=(0, 0, 20, 20), scale=(0.05, 0.14), min_overlap=1.5)
        assert not ok and _inside(box, 400, 300)
        assert 0.04 <= box[2] * box[3] / (400 * 300) <= 0.15
    # a key crop covering the whole image: every proposal is accepted at once
    box, ok = constrained_box(400, 300, key_box=(0, 0, 300, 400), scale=(0.05, 0.14))
    assert ok


def test_rrc_box_central_fallback():
    torch.manual_seed(0)
    # a 1000x10 image cannot hold any 3/4-4/3 crop of >= 50% area: central crop with the ratio clamped
    assert rrc_box(1000, 10, scale=(0.5, 1.0)) == (0, 493, 10, 13)


def test_multi_crop_transform_sizes_and_autoaugment_per_crop():
    img = Image.new("RGB", (120, 90), (120, 60, 30))
    torch.manual_seed(0)
    mc = MultiScaleCrops([48, 24], [2, 3], [0.2, 0.05], [1.0, 0.14], constrained=True)
    pil = mc(img)
    assert [c.size for c in pil] == [(48, 48)] * 2 + [(24, 24)] * 3
    t = MultiCropTransform(mc, [autoaugment_or(lambda x: "moco") if i in (0, 2) else (lambda x: "moco")
                                for i in range(5)])
    draws = [t(img) for _ in range(300)]
    for i in (1, 3, 4):
        assert all(d[i] == "moco" for d in draws)
    for i in (0, 2):  # 50/50 between AutoAugment (a tensor) and the MoCo augmentation
        auto = sum(torch.is_tensor(d[i]) for d in draws)
        assert 110 < auto < 190, auto
        side = 48 if i == 0 else 24
        assert all(d[i].shape == (3, side, side) for d in draws if torch.is_tensor(d[i]))
    from torchvision import transforms as T
    aa = [m for m in autoaugment_or(lambda x: x).transforms[0].transforms if isinstance(m, T.AutoAugment)][0]
    assert aa.policy == T.AutoAugmentPolicy.IMAGENET and aa.interpolation == T.InterpolationMode.NEAREST


def test_ours_recipe_transform_from_flags():
    args = main_moco.get_args_parser().parse_args(
        ["d", "--num_crops", "2", "4", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.05",
         "--max_scale_crops", "1.0", "0.14", "--constrained-cropping", "--auto-augment", "0", "2", "3", "4", "5"])
    main_moco.check_recipe_args(args)
    tf = main_moco.build_transform(args)
    assert tf.crops.constrained and tf.crops.groups == [(32, 2, (0.2, 1.0)), (16, 4, (0.05, 0.14))]
    from torchvision import transforms as T
    assert [isinstance(t, T.RandomChoice) for t in tf.transforms] == [True, False, True, True, True, True]
    views = tf(Image.new("RGB", (64, 48), (10, 200, 30)))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4


@pytest.mark.parametrize("extra,needle", [
    (["--num_crops", "3", "4"], "must be 2"),
    (["--num_crops", "2", "4", "--size_crops", "96"], "one per group"),
    (["--constrained-cropping", "--num_crops", "2"], "add a group of small crops"),
    (["--num_crops", "2", "2", "--auto-augment", "4"], "crop indices go from 0 to 3"),
    (["--aux-weight", "0.4", "--aux-topk", "100", "--moco-k", "64"], "--aux-topk 100"),
    (["--restart"], "--restart starts from"),
])
def test_bad_recipe_flags(extra, needle):
    from src.run.errors import UserError

    args = main_moco.get_args_parser().parse_args(["d", *extra])
    with pytest.raises(UserError, match=needle):
        main_moco.check_recipe_args(args)


# ==== losses against loops ====
def test_knn_positive_loss_matches_loop():
    torch.manual_seed(0)
    n, k, d, f, topk, t = 5, 7, 3, 4, 3, 0.2
    q = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(k, d, dtype=torch.float64), dim=1)
    h = F.normalize(torch.randn(n, f, dtype=torch.float64), dim=1)
    hq = F.normalize(torch.randn(k, f, dtype=torch.float64), dim=1)
    loss = knn_positive_loss(q @ queue.t() / t, h, hq, topk)
    expected = 0.0
    for i in range(n):
        sims = [float(h[i] @ hq[j]) for j in range(k)]
        nearest = sorted(range(k), key=lambda j: -sims[j])[:topk]
        logits = [float(q[i].detach() @ queue[j]) / t for j in range(k)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        expected += -sum(logits[j] - log_z for j in nearest) / topk
    assert loss.dtype == torch.float32
    assert abs(float(loss.detach()) - expected / n) < 1e-6
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def _parse(extra):
    return main_moco.get_args_parser().parse_args(
        ["x", "-a", "resnet18", "--cifar-stem", "-b", "4", "--moco-k", "16", "--mlp", "--moco-t", "0.2",
         "--moco-m", "0.9", "--bn-splits", "1", "-p", "1000", "--num_crops", "2", "3", "--size_crops", "16", "8",
         "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1.0", "0.14", *extra])


def _trunk_features(encoder, x):
    """Backbone features of ``encoder`` by a second, hook-free forward of a copy whose head is removed."""
    trunk = copy.deepcopy(encoder)
    trunk.fc = nn.Identity()
    return F.normalize(trunk(x), dim=1)


@pytest.mark.parametrize("epoch,warmup", [(0, 0), (0, 1)])
def test_multi_crop_step_matches_loop(epoch, warmup):
    """One step of main_moco.train_one_epoch with 1 large + 3 small query crops, one key and the
    nearest-neighbour loss: its logged InfoNCE, aux and total losses equal a per-row loop over a copy of the
    model taken before the step, using the queues as they were BEFORE the step's keys were enqueued."""
    args = _parse(["--aux-weight", "0.5", "--aux-topk", "3", "--warmup-epochs", str(warmup)])
    main_moco.check_recipe_args(args)
    torch.manual_seed(0)
    model, encoder_q, _ = main_moco.build_model(args, CPU, 4)
    with torch.no_grad():  # a queue holding the feature of one of this batch's images makes the order matter
        model.queue_backbone.queue.copy_(F.normalize(torch.randn(16, 512), dim=1))
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(4, 3, 8, 8, generator=g)
                                                                          for _ in range(3)]
    opt = torch.optim.SGD(encoder_q.parameters(), 0.0)
    logger = ProgressLogger(1, 1, 4, 1000, None, rank=1)
    steps = main_moco.train_one_epoch(model, encoder_q, [(crops, torch.zeros(4))], opt,
                                      torch.amp.GradScaler("cpu", enabled=False), moco_lr_schedule(0.0, epoch + 1, 1),
                                      epoch, 0, 1, args, torch.device("cpu"), logger)
    assert [it for it, _ in steps] == [0]  # the generator yields (iteration, loss)

    # the loop reference, on the copy: momentum update, queries per resolution, unshuffled keys
    main_moco.momentum_update(ref.encoder_q, ref.encoder_k, args.moco_m)
    with torch.no_grad():
        large, small = crops[0], torch.cat(crops[2:])
        q = torch.cat([F.normalize(ref.encoder_q(large), dim=1), F.normalize(ref.encoder_q(small), dim=1)])
        h = torch.cat([_trunk_features(ref.encoder_q, large), _trunk_features(ref.encoder_q, small)])
        k = F.normalize(ref.encoder_k(crops[1]), dim=1)
        h_k = _trunk_features(ref.encoder_k, crops[1])
    queue, fqueue, t = ref.queue.queue, ref.queue_backbone.queue, args.moco_t
    fqueue_after = torch.cat([h_k, fqueue[4:]])  # the backbone queue once this step's keys are in (rows 0-3)
    ce = aux = aux_after = 0.0
    for row in range(q.shape[0]):  # rows: crop v of sample b at v * B + b
        b = row % 4
        logits = torch.cat([(q[row] @ k[b]).view(1), queue @ q[row]]).double() / t
        ce += float(torch.logsumexp(logits, 0) - logits[0])
        nearest = (fqueue @ h[row]).topk(3).indices
        log_p = logits[1:] - torch.logsumexp(logits[1:], 0)
        aux += float(-log_p[nearest].mean())
        aux_after += float(-log_p[(fqueue_after @ h[row]).topk(3).indices].mean())
    ce, aux, aux_after = ce / q.shape[0], aux / q.shape[0], aux_after / q.shape[0]
    assert abs(aux_after - aux) > 1e-2  # the order is observable here: the enqueue-first variant differs
    assert abs(float(logger.last["CE"]) - ce) < 1e-4
    expected_aux = aux if epoch >= warmup else 0.0
    assert abs(float(logger.last["Aux"]) - expected_aux) < 1e-4
    assert abs(float(logger.last["Loss"]) - (ce + 0.5 * expected_aux)) < 1e-4
    # after the step, both queues hold this batch's keys at rows 0-3 (also during the warmup)
    torch.testing.assert_close(model.queue.queue[:4], k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.queue_backbone.queue[:4], h_k, rtol=1e-4, atol=1e-5)
    assert int(model.queue.ptr) == int(model.queue_backbone.ptr) == 4


# ==== two processes, torch.distributed.launch, a flat folder (COCO style) ====
@pytest.fixture(scope="module")
def flat_images(tmp_path_factory):
    """The tiny dataset's training images in ONE folder, without class subfolders."""
    base = tmp_path_factory.mktemp("flat")
    root = tiny_dataset(str(base / "demo"))
    flat = base / "train2017"
    flat.mkdir()
    import pathlib
    for i, p in enumerate(sorted(pathlib.Path(root, "train").glob("*/*.png"))):
        shutil.copy(p, flat / f"{i:012d}.png")
    return str(flat)


def test_two_process_launch_constrained_autoaugment_aux_on_flat_folder(flat_images, tmp_path):
    """No --seed (MoCo's default: a fresh one, which rank 0 must share) and a queue that the 48 keys do not fill,
    so the rows still at their random init must agree across ranks too (they once differed: per-rank seeds)."""
    out = tmp_path / "ours"
    p = run(py("-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={free_port()}",
               "main_moco.py", flat_images, "-a", "resnet18", "-b", "8", "--moco-k", "64", "--mlp", "--moco-t", "0.2",
               "--moco-m", "0.995", "--lr", "0.3", "--cos", "--num_crops", "2", "4", "--size_crops", "32", "16",
               "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1.0", "0.14", "--constrained-cropping",
               "--auto-augment", "0", "2", "3", "4", "5", "--aux-topk", "4", "--aux-weight", "0.4", "--epochs", "1",
               "-j", "1", "-p", "2", "--output-dir", str(out)))
    assert_ok(p)
    assert "48 images, 6 iterations/epoch" in p.stdout
    m = SYNC_RE.search(p.stdout)  # weights, queue and backbone-feature queue identical on both ranks
    assert m and m.group(1) == "2", p.stdout[-3000:]
    assert " Aux " in p.stdout and "Epoch: [0][6/6]" in p.stdout
    ck = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    sd = ck["state_dict"]
    assert ck["epoch"] == 1 and sd["queue_backbone.queue"].shape == (64, 512)
    assert int(sd["queue.ptr"]) == int(sd["queue_backbone.ptr"]) == 6 * 8
    torch.testing.assert_close(sd["queue_backbone.queue"].norm(dim=1), torch.ones(64))
