"""eval_semisup.py and src.data.subsets: the labelled subset read from a SimCLR-style list (labels over every class
folder, missing images in one line), SwAV's defaults per --labels_perc, the two parameter groups and their MultiStepLR
schedule against torch's, a few CPU iterations on a generated ImageNet-style folder, a --max_iters stop + resume that
ends bit for bit where an uninterrupted run does, bad layouts and NaN as one line, the shipped lists and recipes."""
import hashlib
import json
import os
import shlex
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import eval_semisup
from src.data.subsets import LabelledSubset, class_of, read_list, subset_samples
from src.models import build_backbone
from src.run.args import ArgumentParser
from src.run.errors import UserError
from src.run.launch import cli
from tests.helpers import ROOT, exits, one_line

pytestmark = pytest.mark.usefixtures("one_thread")

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # sorted: labels 0..3
LISTED = {0: [10026, 10027, 1009], 1: [10040, 1041], 3: [1000, 10045, 10047, 1005]}  # n01484850: none labelled
COMMON = ["-a", "resnet_tiny", "--cifar_stem", "--resize", "32", "--crop_size", "32", "--batch_size", "4",
          "--workers", "0", "-p", "1"]


def _jpeg(path, cls, rng):
    img = rng.integers(0, 90, (40, 48, 3)).astype(np.uint8)
    img[..., cls % 3] += 150  # the class is visible in the dominant colour
    Image.fromarray(img).save(path, format="JPEG")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """ImageNet-style train/<wnid>/<wnid>_<n>.JPEG and val/<wnid>/ILSVRC2012_val_*.JPEG; the unlisted training files
    are NOT images, so a run that read anything outside the list would print "unreadable" warnings."""
    root = tmp_path_factory.mktemp("semisup") / "imagenet"
    rng = np.random.default_rng(0)
    lines = []
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        (root / "val" / wnid).mkdir(parents=True)
        for n in LISTED.get(c, []):
            _jpeg(root / "train" / wnid / f"{wnid}_{n}.JPEG", c, rng)
            lines.append(f"{wnid}_{n}.JPEG")
        for n in (2, 3):  # unlisted
            (root / "train" / wnid / f"{wnid}_{n}.JPEG").write_bytes(b"not a jpeg")
        for i in range(2):
            _jpeg(root / "val" / wnid / f"ILSVRC2012_val_{10 * c + i:08d}.JPEG", c, rng)
    order = np.random.default_rng(1).permutation(len(lines))  # the list's own order, not the folder's
    (root / "list.txt").write_text("".join(lines[i] + "\r\n" for i in order) + "\n")
    return root


def parse(argv):
    return ArgumentParser(parents=[eval_semisup.get_args_parser()]).parse_args(argv)


def run_inprocess(argv):
    """``python eval_semisup.py argv`` in this process, signal handlers restored."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return eval_semisup.main(parse(argv))
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def one_error(argv, capsys):
    """The CLI's exit path: status 2, no traceback, exactly one ``error:`` line; returns it."""
    return one_line(*exits(lambda: cli(eval_semisup.main, lambda: parse(argv)), capsys))


def base(imagenet, out, *extra):
    return ["--data_path", str(imagenet), "--labels_file", str(imagenet / "list.txt"), *COMMON, "--dump_path",
            str(out), *extra]


# ==== the subset ====
def test_subset_matches_a_hand_made_list(imagenet, tmp_path):
    names = ["n01491361_10045.JPEG", "n01440764_1009.JPEG", "", "  n01443537_10040.JPEG\r", "n01440764_10026.JPEG"]
    (tmp_path / "l.txt").write_text("\n".join(names) + "\n\n")
    read = read_list(tmp_path / "l.txt")
    assert read == ["n01491361_10045.JPEG", "n01440764_1009.JPEG", "n01443537_10040.JPEG", "n01440764_10026.JPEG"]
    train = imagenet / "train"
    samples, classes = subset_samples(str(train), read)
    assert classes == WNIDS  # every class folder, the unlabelled n01484850 too: n01491361 is label 3, not 2
    assert samples == [(str(train / "n01491361" / "n01491361_10045.JPEG"), 3),
                       (str(train / "n01440764" / "n01440764_1009.JPEG"), 0),
                       (str(train / "n01443537" / "n01443537_10040.JPEG"), 1),
                       (str(train / "n01440764" / "n01440764_10026.JPEG"), 0)]
    ds = LabelledSubset(str(train), read)
    assert ds.targets == [3, 0, 1, 0] and ds.classes == WNIDS and ds.class_to_idx["n01484850"] == 2
    img, label = ds[2]
    assert label == 1 and np.array_equal(np.asarray(img), np.asarray(Image.open(samples[2][0]).convert("RGB")))
    assert class_of("n01440764_10026.JPEG") == "n01440764"
    # the digest follows the names and their order
    assert ds.digest == LabelledSubset(str(train), list(read)).digest != LabelledSubset(str(train), read[::-1]).digest


def test_missing_images_are_one_line(imagenet, tmp_path, capsys):
    names = read_list(imagenet / "list.txt") + ["n01440764_999.JPEG", "n09999999_1.JPEG", "n09999998_1.JPEG",
                                                "n01443537_7.JPEG"]
    with pytest.raises(UserError) as exc:
        subset_samples(str(imagenet / "train"), names, source="L")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"4 of the {len(names)} images of L are missing from '{imagenet / 'train'}' (first: "
                          "n01440764/n01440764_999.JPEG, n09999999/n09999999_1.JPEG, n09999998/n09999998_1.JPEG, ...)")
    assert "2 listed class folders do not exist at all (n09999999, n09999998)" in msg and "--labels_file" in msg
    # through the CLI: one error line, and nothing was trained
    (tmp_path / "l.txt").write_text("\n".join(names[:3] + ["n01443537_7.JPEG"]) + "\n")
    line = one_error(["--data_path", str(imagenet), "--labels_file", str(tmp_path / "l.txt"), *COMMON,
                     "--dump_path", str(tmp_path / "run")], capsys)
    assert "1 of the 4 images of --labels_file" in line and "n01443537/n01443537_7.JPEG" in line, line
    assert not (tmp_path / "run" / "checkpoint.pth.tar").exists()


@pytest.mark.parametrize("text,needle", [
    ("n01440764_10026.JPEG\nn01440764/n01440764_1009.JPEG\n", "line 2 of --labels_file"),
    ("n01440764_10026.JPEG\nREADME\n", "line 2 of --labels_file"),
    ("n01440764_10026.txt\n", "line 1 of --labels_file"),
    ("n01440764_10026.JPEG\nn01443537_10040.JPEG\nn01440764_10026.JPEG\n", "twice (lines 1 and 3)"),
    ("\n\n", "holds no image names"),
])
def test_bad_lists_are_one_line(text, needle, imagenet, tmp_path, capsys):
    (tmp_path / "l.txt").write_text(text)
    line = one_error(["--data_path", str(imagenet), "--labels_file", str(tmp_path / "l.txt"), *COMMON,
                     "--dump_path", str(tmp_path / "run")], capsys)
    assert needle in line, line
    assert not (tmp_path / "run").exists()  # refused before the run started


def test_bad_layouts_and_flags_are_one_line(imagenet, tmp_path, capsys):
    lst = str(imagenet / "list.txt")
    only_train = tmp_path / "only_train"
    (only_train / "train" / WNIDS[0]).mkdir(parents=True)
    cases = [(["--data_path", str(tmp_path / "nowhere"), "--labels_file", lst], "does not exist"),
             (["--data_path", str(only_train), "--labels_file", lst], f"'{only_train / 'val'}' does not exist"),
             (["--labels_file", lst], "no dataset given"),
             (["--data_path", str(imagenet), "--labels_file", str(tmp_path / "none.txt")], "--labels_file"),
             (["--data_path", str(imagenet), "--labels_file", str(tmp_path)], "does not exist"),  # a folder
             (["--data_path", str(imagenet), "--labels_perc", "5"], "argument --labels_perc"),
             (["--data_path", str(imagenet), "--lr_last_layer", "-1"], "argument --lr_last_layer"),
             (["--data_path", str(imagenet), "--decay_epochs"], "argument --decay_epochs")]
    for argv, needle in cases:
        line = one_error([*argv, *COMMON, "--dump_path", str(tmp_path / "run")], capsys)
        assert needle in line, (argv, line)
    # val/ with other class folders than train/: the labels would not match
    other = tmp_path / "other"
    (other / "val" / "n00000001").mkdir(parents=True)
    _jpeg(other / "val" / "n00000001" / "a.JPEG", 0, np.random.default_rng(0))
    os.symlink(imagenet / "train", other / "train", target_is_directory=True)
    line = one_error(["--data_path", str(other), "--labels_file", lst, *COMMON, "--dump_path", str(tmp_path / "r2")],
                    capsys)
    assert "different class folders" in line, line


# ==== SwAV's defaults and the optimisation ====
def test_defaults_per_labels_perc_are_swavs(tmp_path):
    for perc, lr, lr_last in (("10", 0.01, 0.2), ("1", 0.02, 5.0)):
        a = parse(["--data_path", "/data", "--labels_perc", perc])
        eval_semisup.fill_recipe(a)
        assert (a.lr, a.lr_last_layer) == (lr, lr_last)
        assert a.labels_file == os.path.join(ROOT, "data_lists", f"imagenet_{perc}percent.txt")
        assert (a.epochs, a.batch_size, a.decay_epochs, a.gamma, a.momentum, a.weight_decay) == \
            (20, 32, [12, 16], 0.2, 0.9, 0.0)
        assert (a.seed, a.workers, a.dump_path, a.crop_size, a.resize, a.print_freq) == (31, 10, ".", 224, 256, 50)
        assert a.arch is None and a.pretrained == ""  # the checkpoint's arch, else resnet50 (SwAV's default)
    a = parse(["--data_path", "/data"])
    eval_semisup.fill_recipe(a)
    assert a.labels_perc == "10" and (a.lr, a.lr_last_layer) == (0.01, 0.2)
    a = parse(["/data", "--labels_perc", "1", "--lr", "0.05", "--labels_file", "mine.txt"])  # explicit values win
    eval_semisup.fill_recipe(a)
    assert (a.data, a.lr, a.lr_last_layer, a.labels_file) == ("/data", 0.05, 5.0, "mine.txt")


def test_param_groups_and_schedule_match_torch(tmp_path):
    """Trunk parameters at --lr, the head at --lr_last_layer; the per-iteration schedule equals MultiStepLR stepped
    once per epoch; one momentum-SGD step equals a float64 hand computation per group."""
    torch.manual_seed(0)
    net = eval_semisup.FineTuneNet(build_backbone("resnet_tiny", cifar_stem=True)[0], torch.nn.Linear(128, 4))
    args = parse(["--data_path", "/d", "--labels_perc", "1", "--epochs", "20"])
    eval_semisup.fill_recipe(args)
    opt = eval_semisup.build_optimizer(net, args)
    trunk_ids = {id(p) for p in net.trunk.parameters()}
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in net.trunk.parameters()]
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in net.head.parameters()]
    assert not trunk_ids & {id(p) for p in net.head.parameters()}
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [(0.02, 0.9, 0.0),
                                                                                       (5.0, 0.9, 0.0)]
    ipe = 3
    ours = [eval_semisup.moco_lr_schedule(b, args.epochs, ipe, milestones=args.decay_epochs, gamma=args.gamma)
            for b in (args.lr, args.lr_last_layer)]
    ref_opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                               {"params": [torch.zeros(1, requires_grad=True)], "lr": 5.0}], lr=0.02)
    sched = torch.optim.lr_scheduler.MultiStepLR(ref_opt, [12, 16], gamma=0.2)
    for epoch in range(20):
        for g in range(2):
            assert ours[g][epoch * ipe:(epoch + 1) * ipe] == pytest.approx([ref_opt.param_groups[g]["lr"]] * ipe,
                                                                          rel=1e-12)
        ref_opt.step()
        sched.step()
    assert ours[0][12 * ipe] == pytest.approx(0.004) and ours[1][19 * ipe] == pytest.approx(0.2)
    # two steps (the second uses momentum) against p <- p - lr * (mu * buf + g), in float64
    params = {n: p.detach().double().clone() for n, p in net.named_parameters()}
    bufs = {}
    x = torch.randn(4, 3, 32, 32)
    for step in range(2):
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
        grads = {n: p.grad.detach().double().clone() for n, p in net.named_parameters()}
        opt.step()
        for n, p in net.named_parameters():
            bufs[n] = grads[n] if step == 0 else 0.9 * bufs[n] + grads[n]
            params[n] = params[n] - (5.0 if n.startswith("head.") else 0.02) * bufs[n]
            assert torch.allclose(p.detach().double(), params[n], rtol=1e-5, atol=1e-6), (step, n)


# ==== running ====
def test_a_few_iterations_on_cpu(imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    res = run_inprocess(base(imagenet, out, "--epochs", "3", "--decay_epochs", "1", "2", "--gamma", "0.5"))
    stdout, stderr = capsys.readouterr()
    assert "unreadable" not in stdout + stderr  # only the listed images were read
    assert "semi-supervised fine-tuning, 10% labels: lr 0.01 trunk / 0.2 head, x0.5 at epochs 1 2, 3 epochs, " \
           "batch 4 x 1 processes" in stdout
    assert f"data: 9 labelled train images from '{imagenet / 'list.txt'}' (3 classes) / 8 val images, 4 classes" \
        in stdout
    assert stdout.count("Test:\tTime ") == 3 and stdout.count(" * Acc@1 ") == 3 and "Best Acc@1 so far" in stdout
    best = res["best"]
    assert "Fine-tuning with 10% of labels completed." in stdout
    assert f"Test accuracies: top-1 {best['top1']:.1f}, top-5 {best['top5']:.1f}" in stdout
    assert stdout.rstrip().splitlines()[-1] == f"results written to {out / 'eval_semisup.json'}"
    saved = json.load(open(out / "eval_semisup.json"))
    assert saved["best"] == best and len(saved["history"]) == 3 and saved["labelled_images"] == 9
    assert saved["labels_perc"] == "10" and saved["labels_sha256"] == LabelledSubset(
        str(imagenet / "train"), read_list(imagenet / "list.txt")).digest
    assert all(e["skipped"] == 0 for e in saved["history"])
    # 9 images, batch 4: 3 steps per epoch; both groups' learning rates x0.5 at epochs 1 and 2
    rows = [json.loads(line) for line in open(out / "log.txt")]
    iters = [r for r in rows if r.get("type") == "iter"]
    assert [r["step"] for r in iters] == list(range(1, 10))
    assert [r["lr"] for r in iters] == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025] * 3)
    assert [r["lr_head"] for r in iters] == pytest.approx([0.2] * 3 + [0.1] * 3 + [0.05] * 3)
    ckpt = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["script"] == "eval_semisup.py" and (ckpt["epoch"], ckpt["iter"]) == (3, 0)
    assert ckpt["state_dict"]["head.weight"].shape == (4, 128) and "trunk.conv1.weight" in ckpt["state_dict"]
    # the whole network trained: trunk weights and BN statistics moved away from the seeded random init
    torch.manual_seed(31)
    init = build_backbone("resnet_tiny", cifar_stem=True)[0].state_dict()
    assert not torch.equal(init["conv1.weight"], ckpt["state_dict"]["trunk.conv1.weight"])
    assert not torch.equal(init["bn1.running_mean"], ckpt["state_dict"]["trunk.bn1.running_mean"])


def test_stop_and_resume_is_bit_identical(imagenet, tmp_path, capsys):
    full = run_inprocess(base(imagenet, tmp_path / "a", "--epochs", "2"))
    argv = base(imagenet, tmp_path / "b", "--epochs", "2")
    assert run_inprocess(argv + ["--max_iters", "2"]) is None  # inside epoch 0 (3 steps per epoch)
    assert run_inprocess(argv + ["--max_iters", "5"]) is None  # inside epoch 1, after its test
    resumed = run_inprocess(argv)
    stdout = capsys.readouterr().out
    assert stdout.count("=> stopped by --max_iters") == 2 and stdout.count("=> resumed from") == 2
    assert resumed["history"] == full["history"]
    a = torch.load(tmp_path / "a" / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # another list is not resumed on
    (tmp_path / "l.txt").write_text("\n".join(read_list(imagenet / "list.txt")[:-1]) + "\n")
    line = one_error(["--data_path", str(imagenet), "--labels_file", str(tmp_path / "l.txt"), *COMMON, "--epochs",
                     "3", "--dump_path", str(tmp_path / "b")], capsys)
    assert "another --labels_file / --labels_perc" in line and "labels_sha256" in line, line


def test_non_finite_is_one_line(imagenet, tmp_path, capsys):
    line = one_error(base(imagenet, tmp_path / "lr", "--epochs", "3", "--lr", "1e12", "--lr_last_layer", "1e12"),
                    capsys)
    assert "NaN/inf" in line and ("checkpoint" in line or "no score is reported" in line), line
    trunk = build_backbone("resnet_tiny", cifar_stem=True)[0].state_dict()
    trunk["layer1.0.bn1.running_var"].fill_(float("nan"))
    torch.save({"arch": "resnet_tiny", "state_dict": trunk}, tmp_path / "nan.pth")
    line = one_error(base(imagenet, tmp_path / "nan", "--pretrained", str(tmp_path / "nan.pth")), capsys)
    assert "NaN/inf" in line, line


# ==== what the repository ships ====
LISTS = {"1": (12811, 12, 13, "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
         "10": (128116, 128, 129, "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091")}


@pytest.mark.parametrize("perc", sorted(LISTS))
def test_shipped_lists_are_simclrs(perc):
    """Byte for byte SimCLR's imagenet_subsets/{perc}percent.txt (google-research/simclr be133b3): its size, 1000
    classes with 12-13 / 128-129 images each, every line readable."""
    path = os.path.join(ROOT, "data_lists", f"imagenet_{perc}percent.txt")
    n, low, high, sha = LISTS[perc]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == sha
    names = read_list(path)
    per_class = {}
    for name in names:
        per_class[class_of(name)] = per_class.get(class_of(name), 0) + 1
    assert len(names) == n and len(per_class) == 1000 and set(per_class.values()) == {low, high}


@pytest.mark.parametrize("perc", sorted(LISTS))
def test_sbatch_recipes_carry_swavs_values(perc):
    path = os.path.join(ROOT, "scripts", f"semisup_{perc}percent.sh")
    text = open(path).read()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --requeue" in text and "trap requeue USR1" in text
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    sbatch = dict(line[len("#SBATCH --"):].partition("=")[::2] for line in text.splitlines()
                  if line.startswith("#SBATCH --"))
    cmd = shlex.split(text.split("srun --kill-on-bad-exit=1 python -u ", 1)[1].split(" &\n", 1)[0]
                      .replace("\\\n", " "))
    assert cmd[0] == "eval_semisup.py"
    a = parse([w.replace("$DATASET_PATH", "/data").replace("$PRETRAINED", "/p.pth").replace("$EXPERIMENT_PATH", "/x")
               for w in cmd[1:]])
    eval_semisup.fill_recipe(a)
    assert int(sbatch["nodes"]) * int(sbatch["ntasks-per-node"]) * a.batch_size == 256
    lr, lr_last = {"1": (0.02, 5.0), "10": (0.01, 0.2)}[perc]
    assert (a.labels_perc, a.lr, a.lr_last_layer, a.arch, a.pretrained) == (perc, lr, lr_last, "resnet50", "/p.pth")
    assert (a.epochs, a.decay_epochs, a.gamma, a.momentum, a.weight_decay, a.seed) == (20, [12, 16], 0.2, 0.9, 0, 31)
    assert os.path.samefile(os.path.join(ROOT, a.labels_file), os.path.join(ROOT, "data_lists",
                                                                             f"imagenet_{perc}percent.txt"))
    # every value is written out: each flag that has a default is given explicitly
    flags = {w.split("=")[0] for w in cmd if w.startswith("--")}
    assert {"--" + k for k in ("labels_perc", "labels_file", "pretrained", "arch", "epochs", "batch_size", "lr",
                               "lr_last_layer", "decay_epochs", "gamma", "momentum", "wd", "crop_size", "resize",
                               "seed", "workers", "dump_path")} <= flags
