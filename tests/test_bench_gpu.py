"""python -m bench.gpu, built and run on the CPU: the refusal without CUDA (one line, exit 2), every row builder
once with a tiny model (steps under each option kind, the fp16 grad-scaler path, ceilings, the 1-process group,
the loader feed), the worker runner's crash / timeout / deadline rows, the script-check commands in every script's
own parser plus one real torchrun run and resume, and the ratios and verdicts of the report."""
import json
import sys

import pytest
import torch

import bench.gpu_runner as runner
from bench.gpu import RECIPES, get_args_parser, plan
from bench.gpu_cells import group_info, options, run_cell
from bench.gpu_checks import make_check_data, parse_demo, script_check, script_command
from bench.gpu_report import derive, report
from tests.helpers import py, run

pytestmark = pytest.mark.usefixtures("one_thread", "no_onednn")


@pytest.fixture
def no_onednn(monkeypatch):
    """oneDNN off for the CPU convolutions: torch's oneDNN bf16 convolution backward on a CPU (torch 2.14) now and
    then returns non-finite weight gradients for a channels-last resnet_tiny (its layer4 on 2x2 maps; the same trunk,
    input and seed give finite and equal gradients with oneDNN off), which the rows would report as a non-finite loss.
    The cells' CUDA path is not concerned."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The image and video folders the step cells' script builds read (``bench.common.step_data``, tiny batches)."""
    from bench.common import step_data

    return step_data(str(tmp_path_factory.mktemp("bench_gpu")), 4, 2)


def _plan(*argv, tmp="/tmp/unused"):
    a = get_args_parser().parse_args(list(argv))
    a.device, a.workdir = a.device or "cuda", tmp
    return plan(a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_refuses_without_cuda_in_one_line():
    p = run(py("-m", "bench.gpu", "--quick"), timeout=120)
    assert p.returncode == 2 and p.stdout == "", p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: python -m bench.gpu needs a CUDA GPU"), p.stderr


def test_plan_covers_every_recipe_option_and_ceiling():
    recipes, ceilings, steps, group, feeds, compiled = _plan()
    assert list(steps) == list(RECIPES) and all(len(cells) == 6 for cells in steps.values())
    assert {c["config"] for c in steps["swav"]} == {"base", "all", "fp16", "bf16", "channels_last", "device_aug"}
    assert {c["arch"] for c in ceilings} == {"resnet50", "r3d18"} and len(ceilings) == 8 * 2  # 8 shapes x 2 layouts
    moco = next(c for c in ceilings if c["name"] == "moco matched")
    assert (moco["nmb"], moco["key_nmb"]) == ([1], [1])  # one query back-propagated, one key embedded
    sce6 = steps["sce_6crop"][0]
    assert sce6["sizes"] == [224, 192, 160, 128, 96] and sce6["nmb"] == [2, 1, 1, 1, 1] and sce6["batch_size"] == 128
    assert steps["sce_video"][0]["frames"] == 8 and steps["sce_video"][0]["batch_size"] == 32
    assert steps["sela"][0]["extra_args"] == ["--mode", "sela"]
    assert [c["name"] for c in compiled][:2] == ["moco", "sce_video"] and all(c["config"] == "all+compile"
                                                                             for c in compiled)
    assert [g["expect_syncbn"] for g in group] == [r != "moco" for r in RECIPES]
    assert {(f["pipeline"], len(f["sizes"])) for f in feeds} == {("sce", 1), ("sce", 5), ("moco", 1), ("swav", 2)}
    assert options("all") == {"amp": "bf16", "device_aug": True, "channels_last": True, "compile": False}
    assert options("fp16+channels_last")["amp"] == "fp16" and options("base")["amp"] == "none"
    with pytest.raises(ValueError):
        options("fp16+bf16")
    _, ceilings, steps, _, _, compiled = _plan("--quick")
    assert all(len(c) == 2 for c in steps.values()) and not compiled and len(ceilings) == 8


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_step_row_runs_its_real_step_once(name, monkeypatch, folders):
    """base and all, then fp16 with CPU fp16 autocast forced (the scripts fall back to fp32 on a CPU), so the grad
    scaler path runs: its update() is called once per step."""
    import main_deepclusterv2
    import main_moco
    import main_sce
    import main_swav
    import src.run.args

    _, ceilings, steps, _, _, _ = _plan("--device", "cpu", "--tiny", "--recipes", name)
    cells = {c["config"]: c for c in steps[name]}
    for config in ("base", "all"):
        row = run_cell(cells[config], data=folders)
        assert "error" not in row, row["error"]
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
    for script in (main_moco, main_sce, main_swav, main_deepclusterv2):  # each build resolves the dtype itself
        monkeypatch.setattr(script, "autocast_dtype", lambda args, device, rank=0: src.run.args.amp_dtype(args))
    updates = []
    real_update = torch.amp.GradScaler.update
    monkeypatch.setattr(torch.amp.GradScaler, "update",
                        lambda self, *a: updates.append(self.is_enabled()) or real_update(self, *a))
    row = run_cell(cells["fp16"], data=folders)
    assert "error" not in row, row
    assert updates and all(updates) and len(updates) == cells["fp16"]["warmup"] + cells["fp16"]["steps"]


def test_a_compile_cell_that_fell_back_to_eager_is_an_error_row(monkeypatch, folders):
    compiled = _plan("--device", "cpu", "--tiny", "--recipes", "moco")[5]

    def unavailable(module, *args, **kwargs):
        raise RuntimeError("inductor is not available here")

    monkeypatch.setattr(torch, "compile", unavailable)
    row = run_cell(compiled[0], data=folders)
    assert row["config"] == "all+compile" and row["images_per_s"] > 0  # the eager figures are kept, but marked
    assert row["error"].startswith("torch.compile fell back to eager: warning: --compile failed (RuntimeError")


def test_ceiling_cells_and_the_momentum_crops_add_no_gradient():
    _, ceilings, _, _, _, _ = _plan("--device", "cpu", "--tiny", "--recipes", "sce_video")
    for cell in ceilings:
        row = run_cell(cell)
        assert "error" not in row and row["images_per_s"] > 0, row
    from bench.speed import make_backbone_step

    steps = []
    for keys in ([2], None):  # the same trunk and crops (seed), with and without two key crops
        torch.manual_seed(0)
        step = make_backbone_step("resnet_tiny", 2, [16], [2], torch.device("cpu"), "none", False, False,
                                  key_nmb=keys)
        step()
        steps.append(step.model)
    with_keys, without = steps
    for (name, p), q in zip(with_keys.named_parameters(), without.parameters()):
        assert torch.equal(p.grad, q.grad), name  # forward-only crops change no gradient ...
    bn = [n for n, _ in with_keys.named_buffers() if n.endswith("running_mean")][0]
    assert not torch.equal(with_keys.get_buffer(bn), without.get_buffer(bn))  # ... but they did run (BN stats)


def test_group_cells_build_ddp_under_a_one_process_group(tmp_path, capsys, folders):
    """Every recipe's step under a process group of one (gloo here, NCCL on CUDA): the scripts wrap DDP and reach
    their SyncBatchNorm branch (on a CPU it says it needs CUDA and keeps BatchNorm)."""
    _, _, _, group, _, _ = _plan("--device", "cpu", "--tiny")
    info = group_info(torch.device("cpu"), init_method=f"file://{tmp_path / 'store'}")
    try:
        rows = [run_cell(cell, info, folders) for cell in group]
    finally:
        torch.distributed.destroy_process_group()
    for row in rows:
        assert "error" not in row, row
        assert (row["world_size"], row["backend"], row["syncbn_layers"]) == (1, "gloo", 0)
    assert capsys.readouterr().out.count("needs CUDA (gloo cannot sync BN on a CPU)") >= 5  # sce x3, swav, dc, sela


def test_feed_cell_times_the_split_pipeline_in_loader_workers(tmp_path):
    _, _, _, _, feeds, _ = _plan("--device", "cpu", "--tiny", "--recipes", "swav", "--feed-workers", "2",
                                 tmp=str(tmp_path))
    row = run_cell(feeds[0])
    assert "error" not in row, row
    assert row["images"] >= 2 * feeds[0]["batch_size"] and row["images"] % (2 * feeds[0]["batch_size"]) == 0
    assert row["images_per_s"] > 0  # whole waves of the 2 workers' batches


FAKE_WORKER = """
import json, sys, time
i = int(sys.argv[-1])
print("noise from a script", flush=True)
print("@@cell " + json.dumps({"start": i}), flush=True)
if i == 0:
    sys.stderr.write("Fatal: boom\\n"); sys.exit(3)
if i == 1:
    time.sleep(60)
print("@@cell " + json.dumps({"row": i, "result": {"kind": "step", "images_per_s": 1.0, "ms_per_step": 1.0}}))
"""


def test_runner_turns_a_crash_and_a_hang_into_rows_and_goes_on():
    cells = [{"kind": "step", "name": n, "config": "base"} for n in ("crash", "hang", "fine")]
    lines = []
    rows = runner.run_cells(cells, [sys.executable, "-c", FAKE_WORKER], 2.0, runner.Deadline(60), lines.append)
    assert rows[0]["error"] == "worker died (exit 3): Fatal: boom"
    assert rows[1]["error"] == "cut off: over its 2 s cap (worker killed)"
    assert rows[2]["images_per_s"] == 1.0 and len(lines) == 3
    skipped = runner.run_cells(cells, [sys.executable, "-c", FAKE_WORKER], 2.0, runner.Deadline(1), lines.append)
    assert all("skipped" in r for r in skipped)  # nothing starts without time left


def test_worker_main_prints_protocol_lines_and_creates_its_group(tmp_path, capsys, monkeypatch, folders):
    """``bench.gpu_cells`` itself, as torchrun starts it for the group cells (``--group``: env:// rendezvous from
    the launcher's variables, set here by hand): a start and a row line per cell, from ``--skip`` on."""
    import bench.gpu_cells
    from tests.helpers import free_port

    _, _, _, group, _, _ = _plan("--device", "cpu", "--tiny", "--recipes", "moco", "swav")
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(group))
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    bench.gpu_cells.main([str(path), "--group", "--skip", "1", "--data", folders["images"], "--video-data",
                          folders["videos"]])
    assert not torch.distributed.is_initialized()  # destroyed at the end
    lines = [json.loads(line[len(runner.MARK):]) for line in capsys.readouterr().out.splitlines()
             if line.startswith(runner.MARK)]
    assert [list(m)[0] for m in lines] == ["start", "row"] and lines[0]["start"] == 1
    row = lines[1]["result"]
    assert row["name"] == "swav" and "error" not in row, row
    assert (row["world_size"], row["backend"]) == (1, "gloo") and row["images_per_s"] > 0


def test_script_check_commands_parse_in_every_script():
    import main_deepclusterv2
    import main_moco
    import main_sce
    import main_swav

    for tiny in (True, False):
        recipes = _plan(*(["--device", "cpu", "--tiny"] if tiny else []))[0]
        for r in recipes:
            cmd = script_command(r["name"], r, ("IMG", "VID"), "OUT", "cuda", 2, tiny)
            assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
            script, argv = cmd[5], cmd[6:]
            if script == "main_moco.py":
                args = main_moco.get_args_parser().parse_args(argv)
                main_moco.check_recipe_args(args)
                assert args.max_iters == 2 and args.device == "cuda" and args.arch == r["arch"]
            elif script == "main_sce.py":
                args = main_sce.parse_args(argv)
                main_sce.check_args(args)
                assert args.size_crops == r["sizes"] and args.modality == ("video" if r.get("video") else "image")
            else:
                module = main_swav if script == "main_swav.py" else main_deepclusterv2
                args = module.get_args_parser().parse_args(argv)
                if module is main_deepclusterv2:
                    main_deepclusterv2.check_args(args)
                    assert args.mode == ("sela" if r["name"] == "sela" else "deepcluster")
                assert args.nmb_crops == [2, 6] and args.max_iters == 2


def test_one_script_check_trains_two_iterations_then_resumes(tmp_path):
    recipes = _plan("--device", "cpu", "--tiny", "--recipes", "moco")[0]
    data = make_check_data(str(tmp_path / "data"), tiny=True)
    row = script_check("moco", recipes[0], data, str(tmp_path / "run"), "cpu", runner.Deadline(400), tiny=True)
    assert row["ok"], row
    assert row["resume_line"].startswith("=> resumed from") and "iteration 2" in row["resume_line"]


def test_demo_lines_are_parsed_only_in_the_contract_order():
    out = "...\ndemo kNN top-1 pretrained: 32.80%\ndemo kNN top-1 random-init: 19.80%\n"
    assert parse_demo(out) == (32.8, 19.8)
    assert parse_demo("demo kNN top-1 random-init: 19.80%\ndemo kNN top-1 pretrained: 32.80%\n") is None
    assert parse_demo(out + "a later line\n") is None


def _row(kind, name, config, ips, **kw):
    return {"kind": kind, "name": name, "config": config, "images_per_s": ips, "ms_per_step": 1000.0 / ips,
            "peak_mib": 1024.0, "arch": "a", "batch_size": 4, "sizes": [8], "nmb": [2], **kw}


def test_ratios_verdicts_and_feed_from_hand_made_rows(tmp_path, capsys):
    s = dict(matched_shape="M", bare_shape="B", pipeline="swav")
    rows = [_row("ceiling", "x matched", "fp16", 800.0, shape="M"), _row("ceiling", "x m", "fp16+cl", 1000.0, shape="M"),
            _row("ceiling", "x bare", "fp16", 1250.0, shape="B"),
            _row("step", "good", "base", 400.0, **s), _row("step", "good", "all", 900.0, **s),
            _row("step", "slow", "base", 500.0, **s), _row("step", "slow", "all", 800.0, **s),  # 80%: MISS
            _row("step", "flat", "base", 1000.0, **s), {**_row("step", "flat", "all", 1.0, **s), "error": "OOM"},
            _row("step", "vid", "base", 100.0, video=True, **s), _row("step", "vid", "all", 300.0, video=True, **s),
            _row("step", "nobase", "all", 950.0, **s),
            _row("feed", "good", "", 1200.0, pipeline="swav", workers=16)]
    verdicts, feeds = derive(rows)
    v = {x["name"]: x for x in verdicts}
    assert v["good"]["verdict"] == "PASS" and v["good"]["pct_of_ceiling"] == pytest.approx(90.0)
    assert v["good"]["x_base"] == pytest.approx(2.25) and rows[4]["pct_of_bare"] == pytest.approx(72.0)
    assert v["slow"]["verdict"] == "MISS" and v["slow"]["pct_of_ceiling"] == pytest.approx(80.0)
    assert v["flat"]["verdict"] == "MISS" and v["flat"]["best_config"] == "base"  # 100%, but 1.0x base
    assert v["vid"]["verdict"] == "-" and v["nobase"]["verdict"] == "n/a"
    assert feeds[0]["step"] == "nobase all" and feeds[0]["loader_over_step"] == pytest.approx(1200 / 950)
    result = {"machine": "m", "torch": "t", "wall_s": 1.0, "rows": rows, "checks": [
        {"check": "demo", "name": "sce", "ok": True, "knn_pretrained": 32.8, "knn_random_init": 19.8}]}
    report(result, str(tmp_path / "gpu.json"))
    out = capsys.readouterr().out
    assert "PASS good" in out and "MISS slow" in out and "error: OOM" in out and "fed (1.26x)" in out
    assert "PASS 1/4 image recipes" in out
    saved = json.load(open(tmp_path / "gpu.json"))
    assert saved["verdicts"] == verdicts and saved["feed"][0]["loader_over_step"] == pytest.approx(1200 / 950)
