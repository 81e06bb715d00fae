"""The run skeleton's parts, in process: checkpoint files (atomic, umask, leftovers, empty, full disk, side files),
the non-finite guard, the log's resume, the flag checks, image modes, the list of unsafe globals."""
import argparse
import builtins
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.decode import to_rgb
from src.data.folders import SafeImageFolder
from src.evaluation.pretrained import read_checkpoint
from src.run.args import MOMENTUM, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg
from src.run.checkpoint import (check_writable, load_checkpoint, load_rank_file, remove_stale_temp_files,
                                save_checkpoint, save_rank_file)
from src.run.errors import UserError
from src.run.health import Health, NonFiniteError, check_finite_features
from src.run.logging import JsonLog

CPU = torch.device("cpu")


# ==== checkpoint files ====
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o007, 0o660)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pth", {"x": torch.ones(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c.pth").st_mode) == mode
    assert torch.equal(load_checkpoint(str(tmp_path / "c.pth"))["x"], torch.ones(2))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"v": 1})

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as exc:
        save_checkpoint(path, {"v": 2}, flag="--dump_path")
    assert "disk full" in str(exc.value) and "--dump_path" in str(exc.value) and "previous" in str(exc.value)
    monkeypatch.undo()
    assert load_checkpoint(str(path)) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_unwritable_folder_is_one_line_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is not writable .* pass another --output-dir"):
        check_writable(str(blocker / "run"), "--output-dir")
    check_writable(str(tmp_path / "ok"))
    assert list((tmp_path / "ok").iterdir()) == []  # the probe is gone


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in (".tmp-abc.pth", "checkpoints/.tmp-def.pth", "checkpoint.pth.tar"):
        (tmp_path / name).write_bytes(b"0" * 10)
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-abc.pth", ".tmp-def.pth"]
    assert (tmp_path / "checkpoint.pth.tar").exists()


def test_empty_and_truncated_checkpoints_are_one_line(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match=r"is empty \(0 bytes"):
        load_checkpoint(str(tmp_path / "empty.pth"))
    with pytest.raises(UserError, match=r"is empty \(0 bytes"):
        read_checkpoint(tmp_path / "empty.pth")
    torch.save({"w": torch.randn(1000)}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:300])
    for reader in (lambda p: load_checkpoint(str(p)), read_checkpoint):
        with pytest.raises(UserError, match="truncated"):
            reader(tmp_path / "cut.pth")


def test_rank_file_of_the_checkpoint_step_survives_a_kill_between_writes(tmp_path):
    save_rank_file(str(tmp_path), "queue", 0, {"q": torch.zeros(2)}, 1, 0)  # written with checkpoint (1, 0)
    save_rank_file(str(tmp_path), "queue", 0, {"q": torch.ones(2)}, 1, 5)  # killed before checkpoint (1, 5)
    lines = []
    assert torch.equal(load_rank_file(str(tmp_path), "queue", 0, 1, 0, log=lines.append)["q"], torch.zeros(2))
    assert torch.equal(load_rank_file(str(tmp_path), "queue", 0, 1, 5, log=lines.append)["q"], torch.ones(2))
    assert load_rank_file(str(tmp_path), "queue", 0, 2, 0, log=lines.append) is None
    assert lines and "epoch 1 iteration 5" in lines[-1] and "ignored" in lines[-1]


def test_refusal_lists_every_unsafe_global(tmp_path):
    class Payload:
        def __reduce__(self):
            return builtins.exec, ("print('ran')",)

    torch.save({"args": argparse.Namespace(lr=1), "x": Payload(), "w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError) as exc:
        read_checkpoint(tmp_path / "bad.pth")
    assert "argparse.Namespace" in str(exc.value) and "builtins.exec" in str(exc.value)
    assert "--trust-checkpoint" in str(exc.value)


# ==== non-finite guard ====
def _verdict(h, ipe=10):
    h.verdict(h.flags().tolist(), ipe, "lower --lr", "kept")


def test_health_names_the_first_non_finite_step():
    h = Health(CPU)
    for step, v in enumerate([1.0, 2.0, float("nan"), float("inf"), 1.0], start=20):
        h.update(torch.tensor(v), step)
    with pytest.raises(NonFiniteError) as exc:
        _verdict(h)
    assert "epoch 2, iteration 3" in str(exc.value) and exc.value.collective  # step 22 = epoch 2, 3rd iteration
    h = Health(CPU)
    h.update(torch.tensor(1.0), 0)
    _verdict(h)  # finite: no error, a new window
    assert h.window == 0


def test_health_under_a_grad_scaler_tolerates_skipped_steps_only():
    h = Health(CPU, scaled=True)
    h.update(torch.tensor(float("inf")), 0)
    h.update(torch.tensor(1.0), 1)
    _verdict(h)
    for step in range(2, 5):
        h.update(torch.tensor(float("nan")), step)
    with pytest.raises(NonFiniteError, match="iteration 3"):
        _verdict(h)


def test_health_finds_non_finite_batchnorm_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    h = Health(CPU)
    h.watch(net)
    h.update(torch.tensor(1.0), 0)
    _verdict(h)
    net[1].running_var[1] = float("inf")
    h.update(torch.tensor(1.0), 1)
    with pytest.raises(NonFiniteError, match=r"BatchNorm statistics .*1\.running_var"):
        _verdict(h)


def test_non_finite_features_are_refused():
    check_finite_features(torch.randn(4, 3))
    with pytest.raises(UserError, match=r"NaN/inf train features \(2 of 4 rows\)"):
        check_finite_features(torch.tensor([[1.0], [float("nan")], [2.0], [float("inf")]]), "train features")


# ==== log.txt across resumes ====
def test_log_keeps_one_row_per_step_after_resumes(tmp_path):
    log = JsonLog(str(tmp_path / "log.txt"))
    log.keep_until(0)
    assert (tmp_path / "log.txt").read_text() == ""  # exists from the start
    for step in range(1, 7):
        log.write({"type": "iter", "step": step})
    with open(tmp_path / "log.txt", "a") as f:
        f.write('{"type": "iter", "st')  # torn by a kill
    log.keep_until(4)  # resumed from the checkpoint of step 4
    for step in range(5, 9):
        log.write({"type": "iter", "step": step})
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert steps == list(range(1, 9))


# ==== flags ====
def test_flag_checks_are_one_line_at_parse_time(capsys):
    parser = ArgumentParser("t")
    add_arg(parser, "--lr", type=POSITIVE, default=0.1)
    add_arg(parser, "--momentum", type=MOMENTUM, default=0.9)
    add_arg(parser, "--batch-size", type=POSITIVE_INT, default=2)
    assert parser.parse_args(["--lr", "0.5", "--momentum", "0", "--batch_size", "3"]).batch_size == 3
    for argv, needle in ((["--lr", "-1"], "must be > 0, got -1"), (["--momentum", "1"], "must be < 1, got 1"),
                         (["--momentum", "2"], "must be < 1"), (["--batch-size", "0"], "must be >= 1, got 0"),
                         (["--lr", "x"], "expected a number")):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: argument") and needle in err[0]


# ==== image modes ====
def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    img = Image.open(tmp_path / "deep.png")
    assert img.mode == "I;16"
    assert (np.asarray(img.convert("RGB")) == 255).mean() > 0.99  # what convert("RGB") alone does
    out = np.asarray(to_rgb(img)).astype(int)
    expected = np.rint(ramp / 257.0).astype(int)
    assert out.shape == (64, 64, 3) and np.array_equal(out[..., 0], expected) and (out == 255).mean() < 0.01
    (tmp_path / "set" / "a").mkdir(parents=True)
    Image.fromarray(ramp).save(tmp_path / "set" / "a" / "x.png")
    sample, _ = SafeImageFolder(str(tmp_path / "set"))[0]
    assert np.array_equal(np.asarray(sample)[..., 1], expected)


def test_evaluation_datasets_mark_unreadable_images_instead_of_substituting(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a" / "0.png")
    (tmp_path / "a" / "1.png").write_bytes(b"not an image")
    train = SafeImageFolder(str(tmp_path))
    assert np.asarray(train[1][0])[0, 0].tolist() == [10, 20, 30]  # training: the next image instead
    evaluation = SafeImageFolder(str(tmp_path), skip_unreadable=True)
    assert evaluation[1][1] == -1 and evaluation[0][1] == 0


def test_unreadable_images_are_left_out_and_counted():
    from src.evaluation.classifier import evaluate
    from src.evaluation.features import extract_features

    x = torch.randn(6, 3, 4, 4)
    y = torch.tensor([0, -1, 1, 1, -1, 0])
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    trunk = torch.nn.Flatten()
    stats = {}
    feats, labels = extract_features(trunk, batches, CPU, stats=stats)
    assert stats == {"skipped": 2} and labels.tolist() == [0, 1, 1, 0] and torch.equal(feats, x[y >= 0].flatten(1))
    head = torch.nn.Linear(48, 2)
    res = evaluate(head, batches, CPU, features=trunk)
    ref = evaluate(head, [(x[y >= 0], y[y >= 0])], CPU, features=trunk)
    assert res["skipped"] == 2 and res["n"] == 4 and res["top1"] == ref["top1"]
    assert res["loss"] == pytest.approx(ref["loss"], rel=1e-6)  # 2+2 rows vs 4 in one product: last bits may differ
    nan_trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.0))
    with pytest.raises(UserError, match="NaN/inf"):
        extract_features(nan_trunk, [(torch.full((2, 3, 4, 4), float("nan")), torch.zeros(2, dtype=torch.long))], CPU)
