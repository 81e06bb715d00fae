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
from src.augment.crops import MultiScaleCrops, box_intersection, constrained_box, rrc_box
from src.augment.image import MultiCropTransform, autoaugment_or
from src.losses import knn_positive_loss
from src.run import dist
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


def _parse(extra, data):
    return main_moco.get_args_parser().parse_args(
        [data, "-a", "resnet18", "--cifar-stem", "-b", "4", "--moco-k", "16", "--mlp", "--moco-t", "0.2",
         "--moco-m", "0.9", "--bn-splits", "1", "-p", "1000", "--num_crops", "2", "3", "--size_crops", "16", "8",
         "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1.0", "0.14", *extra])


def _trunk_features(encoder, x):
    """Backbone features of ``encoder`` by a second, hook-free forward of a copy whose head is removed."""
    trunk = copy.deepcopy(encoder)
    trunk.fc = nn.Identity()
    return F.normalize(trunk(x), dim=1)


@pytest.mark.parametrize("epoch,warmup,order", [(0, 0, "neighbours-first"), (0, 1, "neighbours-first"),
                                               (0, 0, "enqueue-first"), (0, 1, "enqueue-first")])
def test_multi_crop_step_matches_loop(epoch, warmup, order, tiny_data):
    """One main_moco.step with 1 large + 3 small query crops, one key and the
    nearest-neighbour loss: its logged InfoNCE, aux and total losses equal a per-row loop over a copy of the
    model taken before the step. The head-space logits use the queue as it was before the step's keys were
    enqueued; the neighbours are picked in the feature queue before (neighbours-first) or after
    (enqueue-first, builder_ours) this step's key features went in."""
    args = _parse(["--aux-weight", "0.5", "--aux-topk", "3", "--warmup-epochs", str(warmup), "--aux-order", order,
                   "--seed", "0", "-j", "0"], tiny_data)
    parts = main_moco.build(args, CPU)
    parts.lr_schedule[:] = 0.0  # the model stays the copy's: only the logged losses are compared
    model = parts.model
    queue = torch.randn(16, 512, generator=torch.Generator().manual_seed(1))  # a draw where the order is observable
    with torch.no_grad():
        model.queue_backbone.queue.copy_(F.normalize(queue, dim=1))
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(4, 3, 8, 8, generator=g)
                                                                          for _ in range(3)]
    stats = main_moco.step(parts, (crops, torch.zeros(4)), epoch * parts.iters_per_epoch)

    # the loop reference, on the copy: momentum update, queries per resolution, unshuffled keys
    ref.momentum_update()
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
    assert abs(float(stats["CE"]) - ce) < 1e-4
    expected_aux = (aux if order == "neighbours-first" else aux_after) if epoch >= warmup else 0.0
    assert abs(float(stats["Aux"]) - expected_aux) < 1e-4
    assert abs(float(stats["Loss"]) - (ce + 0.5 * expected_aux)) < 1e-4
    # after the step, both queues hold this batch's keys at rows 0-3 (also during the warmup)
    torch.testing.assert_close(model.queue.queue[:4], k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.queue_backbone.queue[:4], h_k, rtol=1e-4, atol=1e-5)
    assert int(model.queue.ptr) == int(model.queue_backbone.ptr) == 4


def _loop_aux(q, h, queue, fqueue, t, topk):
    """Float64 loop: for each query row, the topk rows of ``fqueue`` nearest to h[row] (by dot product) as
    positives of log softmax over ``q[row] . queue / t``. Returns (mean loss, per-row neighbour lists)."""
    q, h, queue, fqueue = q.double(), h.double(), queue.double(), fqueue.double()
    total, picked = 0.0, []
    for row in range(q.shape[0]):
        sims = [float(h[row] @ fqueue[j]) for j in range(fqueue.shape[0])]
        nearest = sorted(range(len(sims)), key=lambda j: -sims[j])[:topk]
        logits = [float(q[row] @ queue[j]) / t for j in range(queue.shape[0])]
        log_z = math.log(sum(math.exp(v) for v in logits))
        total += -sum(logits[j] - log_z for j in nearest) / topk
        picked.append(nearest)
    return total / q.shape[0], picked


def test_aux_order_differs_exactly_at_the_images_own_slot(tiny_data):
    """The query's large crop IS its key crop and the key encoder equals the query encoder, so each image's key
    feature equals its query's backbone feature. With the queue pointer at 8 (rows 8-11 take this step's 4 keys):
    enqueue-first (builder_ours) picks row 8 + b as image b's nearest neighbour, its own key, while the head-space
    positive it pulls at that column is the OLD key there (the logits were taken before the head queue's enqueue);
    neighbours-first (builder_ours_warmup) picks among the old rows only and never sees its own key. Everything
    else is identical: InfoNCE, the queues after the step, the gradient-free parts."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 16, 16, generator=g)
    crops = [x, x.clone()] + [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    base = None
    logged, models = {}, {}
    for order in ("neighbours-first", "enqueue-first"):
        args = _parse(["--aux-weight", "1.0", "--aux-topk", "1", "--aux-order", order, "--seed", "0", "-j", "0"],
                      tiny_data)
        parts = main_moco.build(args, CPU)
        parts.lr_schedule[:] = 0.0
        model = parts.model
        if base is None:
            with torch.no_grad():
                queue = torch.randn(16, 512, generator=torch.Generator().manual_seed(1))
                model.queue_backbone.queue.copy_(F.normalize(queue, dim=1))
                model.queue.ptr.fill_(8)
                model.queue_backbone.ptr.fill_(8)
            base = copy.deepcopy(model)
        else:
            model.load_state_dict(base.state_dict())
        logged[order], models[order] = main_moco.step(parts, (crops, torch.zeros(4)), 0), model

    # the loop reference on the state before the step (lr 0; encoder_k equals encoder_q, so the momentum update
    # leaves it as it is up to rounding)
    ref = copy.deepcopy(base)
    with torch.no_grad():
        large, small = crops[0], torch.cat(crops[2:])
        q = torch.cat([F.normalize(ref.encoder_q(large), dim=1), F.normalize(ref.encoder_q(small), dim=1)])
        h = torch.cat([_trunk_features(ref.encoder_q, large), _trunk_features(ref.encoder_q, small)])
        h_k = _trunk_features(ref.encoder_k, crops[1])
    torch.testing.assert_close(h_k, h[:4], rtol=1e-5, atol=1e-5)  # the own key's feature is the query's
    old_f, queue, t = ref.queue_backbone.queue, ref.queue.queue, 0.2
    new_f = old_f.clone()
    new_f[8:12] = h_k
    aux_nf, nn_nf = _loop_aux(q, h, queue, old_f, t, 1)
    aux_ef, nn_ef = _loop_aux(q, h, queue, new_f, t, 1)
    assert [nn_ef[b] for b in range(4)] == [[8], [9], [10], [11]]  # large crops: their own key's slot
    assert all(nn_nf[b][0] not in range(8, 12) or float(h[b] @ old_f[nn_nf[b][0]]) < 0.9 for b in range(4))
    # the slots' head-space entries are the old keys, not this step's: the pulled "positive" is a stale key
    assert all(float(q[b] @ queue[8 + b]) < 0.9 for b in range(4))
    # every row's choice is the same in both orders unless one of them lies in the rows this step rewrote
    assert all(e == n or e[0] in range(8, 12) or n[0] in range(8, 12) for e, n in zip(nn_ef, nn_nf))
    assert sum(e != n for e, n in zip(nn_ef, nn_nf)) >= 4
    assert abs(aux_ef - aux_nf) > 1e-3  # 5e-3 here (the random queue's logits are close), 50x the tolerance below
    assert abs(float(logged["neighbours-first"]["Aux"]) - aux_nf) < 1e-4
    assert abs(float(logged["enqueue-first"]["Aux"]) - aux_ef) < 1e-4
    assert float(logged["neighbours-first"]["CE"]) == pytest.approx(float(logged["enqueue-first"]["CE"]), abs=1e-6)
    a, b = models["neighbours-first"], models["enqueue-first"]
    for name in ("queue.queue", "queue_backbone.queue", "queue.ptr", "queue_backbone.ptr"):
        torch.testing.assert_close(a.state_dict()[name], b.state_dict()[name])
    torch.testing.assert_close(a.queue_backbone.queue[8:12], h_k, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,order", [("ours_coco_200ep", "enqueue-first"), ("ours_coco_800ep", "enqueue-first"),
                                        ("ours_coco_200ep_warmup", "neighbours-first"),
                                        ("ours_coco_800ep_warmup", "neighbours-first")])
def test_recipe_scripts_use_their_references_order(name, order):
    """main_ours.py (builder_ours: enqueue, then neighbours) launches ours_coco_*ep, main_ours_warmup.py
    (builder_ours_warmup: neighbours, then enqueue) the warmup recipes."""
    import os
    import shlex

    text = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", f"{name}.sh")).read()
    command = text.replace("\\\n", " ").split("main_moco.py", 1)[1].split(" &\n", 1)[0]  # the srun line
    words = [{"$DATASET_PATH": "DATA", "$EXPERIMENT_PATH": "OUT"}.get(w, w) for w in shlex.split(command)]
    args = main_moco.get_args_parser().parse_args(words)
    main_moco.check_recipe_args(args)
    assert args.aux_order == order and args.aux_weight == 0.4


def test_aux_order_default_and_spellings():
    parse = main_moco.get_args_parser().parse_args
    assert parse(["d"]).aux_order == "neighbours-first"
    assert parse(["d", "--aux_order", "enqueue-first"]).aux_order == "enqueue-first"
    with pytest.raises(SystemExit):
        parse(["d", "--aux-order", "sometimes"])


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
    so the rows still at their random init must agree across ranks too (they once differed: per-rank seeds).
    builder_ours' order (the headline recipes'): the feature queue's all-gather comes before the backward."""
    out = tmp_path / "ours"
    p = run(py("-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={free_port()}",
               "main_moco.py", flat_images, "-a", "resnet18", "-b", "8", "--moco-k", "64", "--mlp", "--moco-t", "0.2",
               "--moco-m", "0.995", "--lr", "0.3", "--cos", "--num_crops", "2", "4", "--size_crops", "32", "16",
               "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1.0", "0.14", "--constrained-cropping",
               "--auto-augment", "0", "2", "3", "4", "5", "--aux-topk", "4", "--aux-weight", "0.4",
               "--aux-order", "enqueue-first", "--epochs", "1", "-j", "1", "-p", "2", "--output-dir", str(out)))
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
