"""Video evaluation (docs/video.md "Evaluation"): retrieval against a brute-force loop, the 30-view softmax average in
order, the protocol values of eval_linear.py / main_transfer.py --modality video, and CPU runs of linear
evaluation, fine-tuning (with -e 30-view testing) and retrieval on generated videos."""
import argparse
import json
import math

import pytest
import torch
from torch import nn

import eval_linear
import main_transfer
from src.data.video.demo import make_video_demo
from src.evaluation.classifier import evaluate
from src.evaluation.video import ViewAverage
from src.methods.sce import SCE
from src.metrics import retrieval_at_k
from tests.helpers import assert_ok, one_error_line, py, run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


# ==== retrieval ====
def brute_force_retrieval(query, qy, bank, by, ks):
    qc = [[a - sum(col) / len(query) for a, col in zip(row, zip(*query))] for row in query]
    bc = [[a - sum(col) / len(bank) for a, col in zip(row, zip(*bank))] for row in bank]
    norm = lambda v: [a / math.sqrt(sum(x * x for x in v)) for a in v]  # noqa: E731
    qc, bc = [norm(r) for r in qc], [norm(r) for r in bc]
    out = {}
    for k in ks:
        hits = 0
        for q, label in zip(qc, qy):
            sims = [(sum(a * b for a, b in zip(q, r)), j) for j, r in enumerate(bc)]
            nearest = [j for _, j in sorted(sims, key=lambda t: -t[0])[:k]]
            hits += any(by[j] == label for j in nearest)
        out[k] = 100.0 * hits / len(qc)
    return out


def test_retrieval_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(60, 7, generator=g) + 3.0, torch.randn(23, 7, generator=g) - 1.0
    by, qy = torch.randint(0, 5, (60,), generator=g), torch.randint(0, 5, (23,), generator=g)
    ks = (1, 5, 10, 15, 20, 25)
    got = retrieval_at_k(query, qy, bank, by, ks=ks, chunk_size=7)
    want = brute_force_retrieval(query.tolist(), qy.tolist(), bank.tolist(), by.tolist(), ks)
    assert got.keys() == want.keys()
    for k in ks:
        assert got[k] == pytest.approx(want[k]), k
    assert got[1] <= got[5] <= got[25]
    # each set centred by its own mean: shifting one set as a whole changes nothing
    shifted = retrieval_at_k(query + 10.0, qy, bank - 4.0, by, ks=ks)
    assert shifted == pytest.approx(got)


def test_retrieval_centring_matters_and_hit_is_any_of_k():
    bank = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0]])
    by = torch.tensor([0, 1, 2])
    query = torch.tensor([[5.0, 1.0], [5.0, -1.0]])  # centred: (0, 1) and (0, -1)
    qy = torch.tensor([0, 2])
    r = retrieval_at_k(query, qy, bank, by, ks=(1, 2, 3))
    # centred bank: (0.033, 0.1), (0.033, -0.1), (-0.067, 0): query 0 -> item 0 (hit), query 1 -> item 1, then 2
    assert r == {1: 50.0, 2: 100.0, 3: 100.0}


# ==== 30 views ====
def test_thirty_views_average_softmax_per_video_in_order():
    B, V, C = 3, 30, 4
    values = torch.randn(B, V)
    x = values[:, :, None, None, None, None].expand(B, V, 3, 2, 4, 4).contiguous()  # view (b, v) is constant
    head = nn.Linear(1, C)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0], [2.0], [0.5]]))
        head.bias.copy_(torch.tensor([0.0, 0.3, -0.5, 0.1]))
    trunk = lambda clips: clips.flatten(1)[:, :1]  # noqa: E731  (B * V, 3, T, H, W) -> (B * V, 1)
    y = torch.tensor([0, 1, 2])
    res = evaluate(head.eval(), [(x, y)], "cpu", features=trunk)
    with torch.no_grad():
        probs = torch.stack([torch.stack([head(values[b, v].view(1, 1))[0].softmax(0) for v in range(V)]).mean(0)
                             for b in range(B)])
    assert res["n"] == B
    assert res["loss"] == pytest.approx(float(-probs[torch.arange(B), y].log().mean()), rel=1e-5)
    assert res["top1"] == pytest.approx(100.0 * float((probs.argmax(1) == y).float().mean()))
    # features averaged over the views for retrieval: raw, then mean
    assert torch.allclose(ViewAverage(nn.Flatten())(x[:, :, :1, :1, :1, :1]).squeeze(1), values.mean(1))


# ==== protocols ====
def test_protocol_values():
    lin = argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args(["d", "--modality", "video"])
    eval_linear.apply_protocol(lin)
    assert (lin.protocol, lin.lr, lin.batch_size, lin.epochs, lin.warmup_epochs, lin.weight_decay, lin.momentum) == \
        ("video", 4.0, 512, 60, 8, 0.0, 0.9)
    schedule = eval_linear.lr_schedule(lin, 10)
    assert schedule[0] == 0 and schedule[79] == pytest.approx(4.0) and schedule[80] == pytest.approx(4.0)
    assert schedule[-1] < 1e-3 and len(schedule) == 600
    image = argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args(["d"])
    eval_linear.apply_protocol(image)
    assert (image.protocol, image.lr, image.warmup_epochs) == ("swav", 0.3, 0.0)
    ft = argparse.ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args(
        ["d", "--modality", "video", "--dataset", "ucf101", "--finetune"])
    main_transfer.fill_recipe(ft)
    assert (ft.lr, ft.batch_size, ft.epochs, ft.weight_decay, ft.momentum) == (0.025, 64, 200, 0.0, 0.9)
    img = argparse.ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args(["d"])
    main_transfer.fill_recipe(img)
    assert (img.lr, img.batch_size, img.epochs, img.schedule) == (1.5, 256, 60, [40])


# ==== CPU runs ====
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video_eval")
    root = make_video_demo(str(tmp / "demo"), num_classes=2, train_per_class=4, val_per_class=2, height=32,
                           width=40, seconds=3.0)
    torch.manual_seed(0)
    model = SCE("r3d_tiny", dim=16, proj_hidden_dim=32, pred_hidden_dim=32, queue_size=16)
    ckpt = str(tmp / "sce.pth.tar")
    torch.save({"arch": "r3d_tiny", "state_dict": model.state_dict(), "args": {"arch": "r3d_tiny"}}, ckpt)
    return root, ckpt


VIDEO = ["--modality", "video", "--num_frames", "4", "--resize", "40", "-j", "0", "-p", "100"]


def test_linear_evaluation_cli(videos, tmp_path):
    root, ckpt = videos
    p = run(py("eval_linear.py", root, "--pretrained", ckpt, "-b", "4", "--epochs", "2", "--warmup_epochs", "1",
               "--crop_size", "32", "--test_clips", "2", "--dump_path", str(tmp_path / "lin"), *VIDEO), timeout=300)
    assert_ok(p)
    assert "protocol video: lr 0.03125, cosine_iter schedule, 2 epochs, batch 4 (4 x 1 processes)" in p.stdout
    assert "warmup 1 epochs" in p.stdout and "data: 8 train / 4 val videos, 2 classes" in p.stdout
    assert "(4 videos," in p.stdout and "Top-1 test accuracy:" in p.stdout
    saved = json.load(open(tmp_path / "lin" / "eval_linear.json"))
    assert saved["arch"] == "r3d_tiny" and len(saved["history"]) == 2


def test_finetune_then_thirty_view_test_cli(videos, tmp_path):
    root, ckpt = videos
    out = str(tmp_path / "ft")
    ucf = ["--dataset", "ucf101", "--splits_dir", f"{root}/ucf/splits", "--split_id", "2"]
    p = run(py("main_transfer.py", f"{root}/ucf/videos", "--finetune", "--pretrained", ckpt, "-b", "4", "--epochs",
               "1", "--crop-size", "32", "--test_clips", "2", "--output-dir", out, *ucf, *VIDEO), timeout=300)
    assert_ok(p)
    assert "finetune transfer to ucf101: lr 0.0015625 cosine per iteration, 1 epochs, batch 4" in p.stdout
    assert "data: 8 train / 4 test videos, 2 classes" in p.stdout  # split 2 tests groups 3 and 4
    state = torch.load(f"{out}/checkpoint.pth.tar", weights_only=True)["state_dict"]
    assert "1.fc.weight" in state and state["1.fc.weight"].shape == (2, 128)
    # -e: the full protocol, 10 clips x 3 crops per test video
    p = run(py("main_transfer.py", f"{root}/ucf/videos", "--finetune", "--pretrained", ckpt, "-e", "--output-dir",
               out, "--crop-size", "32", *ucf, *VIDEO), timeout=300)
    assert_ok(p)
    assert "Test: 4 videos" in p.stdout and " * Acc@1 " in p.stdout


def test_finetune_head_has_dropout_0_8(videos):
    root, ckpt = videos
    args = argparse.ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args(
        [root, "--modality", "video", "--dataset", "folder", "--finetune", "--pretrained", ckpt, "--num_frames", "2",
         "--crop-size", "32"])
    main_transfer.fill_recipe(args)
    trunk, head = main_transfer.build_model(args, torch.device("cpu"), 2, 0)
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.8 and not head.normalize
    assert list(head.state_dict()) == ["fc.weight", "fc.bias"]


def test_retrieval_cli(videos, tmp_path):
    root, ckpt = videos
    out = tmp_path / "ret"
    p = run(py("-m", "eval.retrieval", f"{root}/ucf/videos", "--splits_dir", f"{root}/ucf/splits", "--pretrained",
               ckpt, "--num_frames", "2", "--resize", "32", "-b", "4", "-j", "0", "--test_clips", "2", "--ks", "1",
               "5", "--output_dir", str(out)), timeout=300)
    assert_ok(p)
    assert "bank: 8 train, queries: 4 test, 128-d features" in p.stdout
    assert p.stdout.strip().splitlines()[-1].startswith("retrieval R@1=")
    bank = torch.load(out / "train_features.pth", weights_only=True)
    assert bank.shape == (8, 128)
    again = run(py("-m", "eval.retrieval", "--from_bank", str(out), "--ks", "1", "5"))
    assert_ok(again)
    assert again.stdout.strip().splitlines()[-1] == p.stdout.strip().splitlines()[-1]


def test_video_eval_errors_are_one_line(videos, tmp_path):
    root, ckpt = videos
    p = run(py("main_transfer.py", root, "--modality", "video", "--dataset", "folder", "--pretrained", ckpt))
    assert "--finetune" in one_error_line(p)
    p = run(py("eval_linear.py", str(tmp_path / "nowhere"), "--modality", "video"))
    assert "does not exist" in one_error_line(p)
    p = run(py("eval_linear.py", root, "--modality", "video", "--precompute_features"))
    assert "--precompute_features" in one_error_line(p)


def test_retrieval_cli_on_image_folders(tmp_path):
    from tests.helpers import tiny_dataset

    data = tiny_dataset(str(tmp_path / "img"), num_classes=3, train_per_class=4, val_per_class=2, size=32)
    p = run(py("-m", "eval.retrieval", data, "--modality", "image", "-a", "resnet_tiny", "--resize", "32",
               "--crop_size", "32", "-b", "8", "-j", "0", "--ks", "1", "5", "--output_dir", str(tmp_path / "r")))
    assert_ok(p)
    assert "bank: 12 train, queries: 6 test, 128-d features" in p.stdout
    saved = json.load(open(tmp_path / "r" / "retrieval.json"))
    assert set(saved["recall"]) == {"1", "5"}
