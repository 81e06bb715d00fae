"""main_deepclusterv2.py end to end on CPU: DeepCluster-v2 and SeLa-v2 with 2 gloo processes (torchrun), eval.knn
on the checkpoints, bit-exact mid-epoch resume (memory bank and labels included), and a bad flag."""
import pytest
import torch

import main_deepclusterv2
from src.run.launch import exit_on_user_error
from tests.helpers import SYNC_RE, assert_ok, free_port, py, run

TINY = ["--arch", "resnet18", "--hidden_mlp", "32", "--feat_dim", "16", "--nmb_prototypes", "6", "6", "6",
        "--batch_size", "8", "--size_crops", "32", "16", "--nmb_crops", "2", "2", "--min_scale_crops", "0.14", "0.05",
        "--max_scale_crops", "1.", "0.14", "--base_lr", "0.6", "--final_lr", "0.0006", "--warmup_epochs", "0",
        "--workers", "0", "--print_freq", "2", "--epochs", "2"]


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # the session's 4 classes x 12 images at 32 px (read only)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("mode", ["deepcluster", "sela"])
def test_torchrun_two_processes_then_knn(data, tmp_path, mode):
    out = tmp_path / mode
    p = run(py("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "main_deepclusterv2.py", "--mode", mode, "--data_path", data, *TINY, "--dump_path", str(out),
               *(["--freeze_prototypes_niters", "2"] if mode == "sela" else [])))
    assert_ok(p)
    m = SYNC_RE.search(p.stdout.replace("weights and prototypes", "encoder weights and queue"))
    assert m and m.group(1) == "2", p.stdout[-3000:]
    assert p.stdout.count(f"{mode} labels: head 0:") == 2  # labels recomputed at each epoch start
    ck = _load(out / "checkpoint.pth.tar")
    assert ck["epoch"] == 2 and ck["assignments"].shape == (3, 48)
    assert (ck["assignments"] >= -100).all() and (ck["assignments"] < 6).all()
    for r in (0, 1):
        mb = _load(out / f"mb{r}.pth")
        assert mb["local_memory_embeddings"].shape == (2, 24, 16) and (mb["epoch"], mb["iter"]) == (2, 0)
    norms = ck["state_dict"]["prototypes.0.weight"].norm(dim=1)
    if mode == "deepcluster":  # the normalised k-means centroids, never moved by SGD
        torch.testing.assert_close(norms, torch.ones(6))
    else:  # SeLa-v2: learned by SGD after the freeze, so the last step moved them off the unit sphere
        assert not torch.allclose(norms, torch.ones(6), rtol=0, atol=1e-6)
    if mode == "deepcluster":
        return  # same checkpoint layout in both modes: one eval.knn run is enough
    k = run(py("-m", "eval.knn", data, "--pretrained", str(out / "checkpoint.pth.tar"), "--resize", "32",
               "--crop-size", "32", "-b", "16", "-j", "0", "-k", "3"))
    assert_ok(k)
    assert "prefix 'backbone.'" in k.stdout and k.stdout.strip().splitlines()[-1].startswith("best-NN=")


def test_resume_mid_epoch_is_bit_identical(data, tmp_path):
    """Cut in epoch 1 (after one k-means): the resumed run reuses the saved labels and memory bank."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    flags = ["--data_path", data, *TINY, "--batch_size", "16"]  # 3 iterations per epoch
    assert_ok(run(py("main_deepclusterv2.py", *flags, "--dump_path", str(full))))
    p = run(py("main_deepclusterv2.py", *flags, "--dump_path", str(cut), "--max_iters", "4"))
    assert_ok(p)
    assert "stopped by --max_iters 4 at epoch 1, iteration 1" in p.stdout
    p = run(py("main_deepclusterv2.py", *flags, "--dump_path", str(cut)))
    assert_ok(p)
    assert "at epoch 1, iteration 1" in p.stdout and "filling the memory banks" not in p.stdout
    a, b = _load(full / "checkpoint.pth.tar"), _load(cut / "checkpoint.pth.tar")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert torch.equal(a["assignments"], b["assignments"])
    ma, mb = _load(full / "mb0.pth"), _load(cut / "mb0.pth")
    assert torch.equal(ma["local_memory_embeddings"], mb["local_memory_embeddings"])


def test_too_many_prototypes_one_line(data, tmp_path, capsys, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    args = main_deepclusterv2.get_args_parser().parse_args(
        ["--data_path", data, *TINY, "--nmb_prototypes", "100", "--dump_path", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(main_deepclusterv2.main)(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1 and "--nmb_prototypes 100 is larger than the 48" in lines[0]


def _main_in_process(argv, monkeypatch):
    """``python main_deepclusterv2.py argv`` in this process: its parts, or SystemExit (bad input)."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    return exit_on_user_error(main_deepclusterv2.main)(main_deepclusterv2.get_args_parser().parse_args(argv))


@pytest.mark.parametrize("cut", ["epoch_end", "mid_epoch"])
def test_resume_with_a_foreign_memory_bank_file(data, tmp_path, capsys, monkeypatch, cut):
    """Issue "Nothing shared": mb0.pth replaced by ``torch.save([1, 2, 3])``. Resumed at an epoch end, the run
    rebuilds the bank with one pass over the data and finishes; resumed mid-epoch (the bank of that very step is
    needed) it ends in one ``error:`` line, exit status 2, no traceback."""
    out = tmp_path / cut
    flags = ["--data_path", data, *TINY, "--batch_size", "16", "--dump_path", str(out)]  # 3 iterations per epoch
    _main_in_process([*flags, "--max_iters", "3" if cut == "epoch_end" else "4"], monkeypatch)
    ck = _load(out / "checkpoint.pth.tar")
    assert (ck["epoch"], ck["iter"]) == ((1, 0) if cut == "epoch_end" else (1, 1))
    torch.save([1, 2, 3], out / "mb0.pth")
    capsys.readouterr()
    if cut == "epoch_end":
        parts = _main_in_process(flags, monkeypatch)
        stdout = capsys.readouterr().out
        assert parts.finished and "=> filling the memory banks" in stdout and "at epoch 1, iteration 0" in stdout
        mb = _load(out / "mb0.pth")
        assert mb["local_memory_embeddings"].shape == (2, 48, 16) and (mb["epoch"], mb["iter"]) == (2, 0)
        assert _load(out / "checkpoint.pth.tar")["epoch"] == 2
        return
    with pytest.raises(SystemExit) as exc:
        _main_in_process(flags, monkeypatch)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "resuming mid-epoch needs mb0.pth" in lines[0] and "epoch-end checkpoint" in lines[0]
