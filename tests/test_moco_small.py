"""SSL-small (Shi et al. 2021) in main_moco.py: the five small architectures, the recipe's augmentation
flags, --resume --restart, experiments.convert-seed, and the recipe scripts' flags."""
import glob
import os
import shlex

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

import main_moco
from src.methods.moco import MoCo, load_for_restart
from src.models import build_backbone
from src.run.loop import resume_source
from tests.helpers import ROOT, assert_ok, py, run

SMALL = {"resnet18": 512, "mobilenetv3_small": 1024, "mobilenetv3_large": 1280, "efficientnet_b0": 1280,
         "deit_tiny": 192}


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # the session's 4 classes x 12 images at 32 px (read only)


@pytest.mark.parametrize("arch,dim", SMALL.items())
def test_small_arch_builds_runs_and_reports_its_dim(arch, dim):
    """Each backbone behind MoCo with SSL-small's wide head (Linear(d, 2d)-ReLU-Linear(2d, 128)): forward
    and backward at 32-64 px, gradients reach the first layer, the key encoder encodes too."""
    size = 32 if arch == "deit_tiny" else 64
    trunk, out_dim = build_backbone(arch, image_size=size)
    assert out_dim == dim and trunk(torch.randn(2, 3, size, size)).shape == (2, dim)
    torch.manual_seed(0)
    model = MoCo(arch, dim=16, K=8, head="wide", bn_splits=2, image_size=size)
    fc = model.encoder_q.fc
    assert (fc[0].in_features, fc[0].out_features, fc[2].out_features) == (dim, 2 * dim, 16)
    model.train()
    x = torch.randn(4, 3, size, size)
    q = F.normalize(model.encoder_q(x), dim=1)
    with torch.no_grad():
        k, _ = model.keys(x)
    (-(q * k).sum(1).mean() + q.square().sum()).backward()
    first = next(p for p in model.encoder_q.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert k.shape == (4, 16) and torch.allclose(k.norm(dim=1), torch.ones(4))


def test_ssl_small_augmentation_flags():
    """--cj s gives ColorJitter(0.8s, 0.8s, 0.8s, min(0.5, 0.4s)); --grey-scale / --gaussian-blur set the
    probabilities; the v2 pipeline is used with or without --aug-plus (SSL-small has no v1 path)."""
    for extra in ([], ["--aug-plus"]):
        args = main_moco.get_args_parser().parse_args(
            ["d", "--cj", "1.", "--grey-scale", "0.5", "--gaussian-blur", "0.5", "--crop-size", "32", *extra])
        view = main_moco.build_transform(args).transforms[0]
        ops = view.transforms
        jitter = ops[1].transforms[0]
        assert isinstance(jitter, T.ColorJitter) and ops[1].p == 0.8
        assert jitter.brightness == pytest.approx((0.2, 1.8)) and jitter.saturation == pytest.approx((0.2, 1.8))
        assert jitter.hue == pytest.approx((-0.4, 0.4))
        assert isinstance(ops[2], T.RandomGrayscale) and ops[2].p == 0.5
        assert ops[3].p == 0.5
    args = main_moco.get_args_parser().parse_args(["d", "--cj", "1.5"])
    assert main_moco.build_transform(args).transforms[0].transforms[1].transforms[0].hue == (-0.5, 0.5)
    # without the new flags: MoCo v2's jitter 0.4/0.4/0.4/0.1, grey 0.2
    args = main_moco.get_args_parser().parse_args(["d", "--aug-plus"])
    ops = main_moco.build_transform(args).transforms[0].transforms
    assert ops[1].transforms[0].hue == (-0.1, 0.1) and ops[2].p == 0.2 and ops[3].p == 0.5


def test_restart_drops_mismatched_keys_and_copies_query_into_key_encoder():
    torch.manual_seed(0)
    old = MoCo("resnet18", dim=16, K=8, head="simple")
    with torch.no_grad():
        for p in old.encoder_k.parameters():
            p.add_(1.0)  # the checkpoint's key encoder differs from its query encoder
    state = {"module." + k: v for k, v in old.state_dict().items()}  # DDP layout
    state["module.student.conv1.weight"] = torch.zeros(1)  # an extra tensor (e.g. a converted SEED file)
    new = MoCo("resnet18", dim=16, K=8, head="wide")
    report = load_for_restart(new, state)
    mismatched = {k for k, _, _ in report["mismatched"]}
    assert mismatched == {"encoder_q.fc.0.weight", "encoder_q.fc.0.bias", "encoder_q.fc.2.weight",
                          "encoder_k.fc.0.weight", "encoder_k.fc.0.bias", "encoder_k.fc.2.weight"}
    assert report["ignored"] == ["student.conv1.weight"]
    assert "encoder_q.fc.0.weight" in report["missing"]
    for k, v in new.encoder_k.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(v, old.encoder_q.state_dict()[k], msg=k)  # q, not the old k
    for (kq, q), (kk, k) in zip(new.encoder_q.state_dict().items(), new.encoder_k.state_dict().items()):
        assert kq == kk and torch.equal(q, k)
    assert torch.equal(new.queue.queue, old.queue.queue)  # same K and dim: the queue is kept
    with pytest.raises(Exception, match="no encoder_q weights"):
        load_for_restart(MoCo("resnet34", dim=16, K=8), {"encoder_q.conv1.weight": torch.zeros(3)})


def _fake_seed_checkpoint(path):
    """A SEED-style file: a resnet18 student (with a 1000-way fc) and a teacher, under ``module.``."""
    torch.manual_seed(1)
    student, _ = build_backbone("resnet18")
    student.fc = torch.nn.Linear(512, 1000)
    sd = {f"module.student.{k}": v for k, v in student.state_dict().items()}
    sd.update({f"module.teacher.{k}": torch.zeros(2) for k in ("conv1.weight", "fc.weight")})
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd}, path)
    return student


def test_convert_seed_then_readme_command_restarts_at_epoch_zero(data, tmp_path):
    """The reference README's small-model command (sizes, epochs and queue scaled down), --aug-plus and
    the MoCo-style launch flags included, restarting from a converted SEED checkpoint."""
    student = _fake_seed_checkpoint(tmp_path / "seed-resnet18-ep200.pth.tar")
    p = run(py("-m", "experiments.convert-seed", str(tmp_path / "seed-resnet18-ep200.pth.tar")))
    assert_ok(p)
    converted = tmp_path / "converted_ep200.pth.tar"
    ck = torch.load(converted, map_location="cpu", weights_only=True)
    sd = ck["state_dict"]
    assert not any(k.startswith("module.teacher") for k in sd) and "module.student.conv1.weight" in sd
    assert torch.equal(sd["module.encoder_q.layer4.1.bn2.weight"], student.state_dict()["layer4.1.bn2.weight"])
    assert ck["epoch"] == 200 and ck["arch"] == "resnet18"

    out = tmp_path / "ckpts"
    cmd = py("main_moco.py", data, "-a", "resnet18", "--lr", "0.06", "--batch-size", "8", "-j", "1", "--epochs", "2",
             "--dist-url", "env://", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
             "--mlp", "wide", "--moco-t", "0.1", "--moco-k", "32", "--aug-plus", "--cj", "1.", "--grey-scale", "0.5",
             "--gaussian-blur", "0.5", "--cos", "--ckpt-dir", str(out), "--resume", str(converted), "--restart",
             "--crop-size", "32", "--bn-splits", "2", "--max-iters", "2", "-p", "1")
    p = run(cmd)
    assert_ok(p)
    assert "restarted from the weights of" in p.stdout and "at epoch 0" in p.stdout
    assert "Epoch: [0][1/6]" in p.stdout
    assert "ignored" in p.stdout and "encoder_q.fc.weight" in p.stdout  # the student's 1000-way fc
    ck = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["iter"]) == (0, 2)


def test_restarted_run_continues_from_its_own_checkpoint(tmp_path):
    """--resume X --restart restarts from X until the run has written OUTPUT_DIR/checkpoint.pth.tar; then the
    same command (a requeued SLURM job) continues that run instead of restarting it again."""
    seed_file, out = tmp_path / "converted_ep200.pth.tar", tmp_path / "run"
    seed_file.write_bytes(b"x")
    args = main_moco.get_args_parser().parse_args(
        ["d", "--resume", str(seed_file), "--restart", "--ckpt-dir", str(out)])
    assert resume_source(args.output_dir, args.resume, args.restart) == (str(seed_file), True)
    out.mkdir()
    (out / "checkpoint.pth.tar").write_bytes(b"x")
    assert resume_source(args.output_dir, args.resume, args.restart) == (str(out / "checkpoint.pth.tar"), False)
    args.restart = False  # plain --resume: that file, resumed in full
    assert resume_source(args.output_dir, args.resume, args.restart) == (str(seed_file), False)


def test_restart_from_our_checkpoint_warns_about_shape_mismatch(data, tmp_path):
    """A run with another head (simple -> wide) and epoch 1 done: weights only, listed warning, epoch 0."""
    first = tmp_path / "first"
    base = [data, "-a", "mobilenetv3_small", "--crop-size", "64", "-b", "8", "--moco-k", "32", "-j", "1",
            "--bn-splits", "2", "--seed", "0", "-p", "1"]
    assert_ok(run(py("main_moco.py", *base, "--mlp", "--epochs", "1", "--max-iters", "1",
                     "--output-dir", str(first))))
    p = run(py("main_moco.py", *base, "--mlp", "wide", "--epochs", "3", "--max-iters", "1", "--resume",
               str(first / "checkpoint.pth.tar"), "--restart", "--output-dir", str(tmp_path / "second")))
    assert_ok(p)
    warning = [l for l in p.stderr.splitlines() if l.startswith("warning: --restart dropped")]
    assert len(warning) == 1 and "encoder_q.fc.0.weight (1024, 1024) vs (2048, 1024)" in warning[0]
    assert "Epoch: [0][1/6]" in p.stdout


def _script_args(path):
    """The main_moco.py arguments written in an sbatch script (variables replaced by placeholders)."""
    text = open(path).read().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if "main_moco.py" in l).removesuffix(" &")  # run in the background
    line = line.replace('${SEED_CKPT:+--resume "$SEED_CKPT" --restart}', "")
    words = shlex.split(line.replace('"$DATASET_PATH"', "DATA").replace('"$EXPERIMENT_PATH"', "OUT"))
    return words[words.index("main_moco.py") + 1:]


@pytest.mark.parametrize("name", ["moco_coco_200ep", "moco_coco_800ep", "ours_coco_200ep", "ours_coco_800ep",
                                  "ours_coco_200ep_warmup", "ours_coco_800ep_warmup"]
                         + [f"small_{a}_800ep" for a in SMALL])
def test_recipe_scripts_parse_with_the_references_values(name):
    path = os.path.join(ROOT, "scripts", f"{name}.sh")
    assert open(path).readline() == "#!/bin/bash\n"
    args = main_moco.get_args_parser().parse_args(_script_args(path))
    main_moco.check_recipe_args(args)
    if name.startswith("small_"):
        assert (args.lr, args.batch_size, args.epochs, args.mlp, args.moco_t, args.cj, args.grey_scale,
                args.gaussian_blur, args.amp) == (0.06, 512, 800, "wide", 0.1, 1.0, 0.5, 0.5, "fp16")
        assert args.arch == name[len("small_"):-len("_800ep")]
        assert 'SEED_CKPT:+--resume "$SEED_CKPT" --restart' in open(path).read()
    else:
        assert (args.lr, args.batch_size, args.moco_t, args.mlp, args.cos) == (0.3, 256, 0.2, "simple", True)
    if name.startswith("ours_"):
        assert (args.moco_m, args.num_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops,
                args.auto_augment, args.aux_topk, args.aux_weight) == (
            0.995, [2, 4], [160, 96], [0.2, 0.05], [1.0, 0.14], [0, 2, 3, 4, 5], 20, 0.4)
        assert args.constrained_cropping
        assert args.warmup_epochs == ({"200": 5, "800": 20}[name[10:13]] if "warmup" in name else 0)
    if name.startswith("moco_coco"):
        assert (args.moco_m, args.num_crops, args.size_crops, args.aux_weight) == (0.999, [2], [224], 0.0)
    assert sorted(glob.glob(os.path.join(ROOT, "scripts", "small_*_800ep.sh"))) == sorted(
        os.path.join(ROOT, "scripts", f"small_{a}_800ep.sh") for a in SMALL)
