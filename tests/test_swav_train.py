"""main_swav.py end to end on CPU: the facebookresearch/swav README's launcher command with 2 gloo processes, the
queue switching on at --epoch_queue_starts, bit-exact resume (queue included), the NaN guard, bad flags, and eval.knn
on the result."""
import json

import pytest
import torch

import main_swav
from src.run.launch import exit_on_user_error
from tests.helpers import SYNC_RE, assert_ok, free_port, one_error_line, py, run

# the official flags with small sizes: resnet18 (ImageNet stem) on 32 + 16 px crops, 12 prototypes
TINY = ["--arch", "resnet18", "--hidden_mlp", "32", "--feat_dim", "16", "--nmb_prototypes", "12", "--batch_size", "8",
        "--size_crops", "32", "16", "--nmb_crops", "2", "2", "--min_scale_crops", "0.14", "0.05",
        "--max_scale_crops", "1.", "0.14", "--base_lr", "0.6", "--final_lr", "0.0006", "--warmup_epochs", "0",
        "--freeze_prototypes_niters", "3", "--use_fp16", "true", "--workers", "0", "--print_freq", "2"]


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # the session's 4 classes x 12 images at 32 px (read only)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_launch_two_processes_queue_and_knn(data, tmp_path):
    out = tmp_path / "launch"
    p = run(py("-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={free_port()}", "main_swav.py",
               "--data_path", data + "/train", *TINY, "--epochs", "2", "--queue_length", "40",
               "--epoch_queue_starts", "1", "--dump_path", str(out)))
    assert_ok(p)
    assert "launcher=launch" in p.stdout and "queue 32 from epoch 1" in p.stdout  # 40 rounded down to 2 x 16
    m = SYNC_RE.search(p.stdout.replace("weights and prototypes", "encoder weights and queue"))
    assert m and m.group(1) == "2", p.stdout[-3000:]
    epochs = [json.loads(l) for l in (out / "log.txt").read_text().splitlines() if '"epoch_time_s"' in l]
    assert [e["queue_in_use"] for e in epochs] == [False, True]  # only from --epoch_queue_starts, once full
    for r in (0, 1):
        q = _load(out / f"queue{r}.pth")
        assert q["queue"].shape == (2, 16, 16) and (q["epoch"], q["iter"]) == (2, 0)
    ck = _load(out / "checkpoint.pth.tar")
    assert ck["epoch"] == 2 and ck["arch"] == "resnet18" and "prototypes.weight" in ck["state_dict"]
    assert (out / "checkpoints" / "ckp-0.pth").exists() and (out / "checkpoints" / "ckp-1.pth").exists()
    k = run(py("-m", "eval.knn", data, "--pretrained", str(out / "checkpoint.pth.tar"), "--resize", "32",
               "--crop-size", "32", "-b", "16", "-j", "0", "-k", "3"))
    assert_ok(k)
    assert "prefix 'backbone.'" in k.stdout and k.stdout.strip().splitlines()[-1].startswith("best-NN=")


def test_resume_mid_epoch_is_bit_identical(data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    # 6 iterations of 8; the queue (2 batches) is full and in use before the cut at 3
    flags = ["--data_path", data, *TINY, "--epochs", "1", "--queue_length", "16", "--epoch_queue_starts", "0"]
    assert_ok(run(py("main_swav.py", *flags, "--dump_path", str(full))))
    p = run(py("main_swav.py", *flags, "--dump_path", str(cut), "--max_iters", "3"))
    assert_ok(p)
    assert "stopped by --max_iters 3 at epoch 0, iteration 3" in p.stdout
    assert _load(cut / "queue0.pth")["iter"] == 3
    p = run(py("main_swav.py", *flags, "--dump_path", str(cut)))  # the same command resumes
    assert_ok(p)
    assert "at epoch 0, iteration 3, queue restored" in p.stdout
    a, b = _load(full / "checkpoint.pth.tar"), _load(cut / "checkpoint.pth.tar")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert torch.equal(_load(full / "queue0.pth")["queue"], _load(cut / "queue0.pth")["queue"])


def test_nan_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "nan"
    flags = ["--data_path", data, *TINY, "--epochs", "1", "--dump_path", str(out)]
    assert_ok(run(py("main_swav.py", *flags, "--max_iters", "1")))
    before = (out / "checkpoint.pth.tar").read_bytes()
    # the resume changes the lr on purpose (a resume refuses that unless told)
    line = one_error_line(run(py("main_swav.py", *flags, "--base_lr", "1e30", "--allow_changed_flags")))
    assert "NaN" in line and "last good checkpoint is kept" in line
    assert (out / "checkpoint.pth.tar").read_bytes() == before


@pytest.mark.parametrize("extra,needle", [
    (["--nmb_crops", "2", "2", "2"], "one value per crop group"),
    (["--crops_for_assign", "0", "4"], "crop ids must lie in [0, 3]"),
    (["--min_scale_crops", "0.5", "0.2"], "0 < min <= max <= 1"),
    (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
])
def test_bad_flags_one_line(data, tmp_path, extra, needle, capsys, monkeypatch):
    """In-process (the subprocess path is covered by the NaN test): exit status 2, one 'error:' line."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    args = main_swav.get_args_parser().parse_args(["--data_path", data, *TINY, "--epochs", "1", *extra,
                                                   "--dump_path", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(main_swav.main)(args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err
