"""Speed options: flag parsing in every method script, the AMP resolution (fp16 without CUDA -> fp32, one warning
line), torch.compile's eager fallback, channels-last, fused-optimizer arguments, no host-device synchronisation
inside a training step, and a 2-iteration CPU run of every script with --channels-last --amp bf16."""
import collections
import sys
import types

import pytest
import torch
from torch import nn

import main_deepclusterv2
import main_moco
import main_sce
import main_swav
from src.methods.momentum import KeyQueue
from src.run.args import amp_dtype, autocast_dtype
from src.run.speed import CompiledOrEager, fused_kwargs, maybe_compile, to_channels_last
from tests.helpers import assert_ok, run
from tests.test_split_data import SCRIPTS, data, script_cmd  # noqa: F401 (data: the module's dataset fixture)

PARSERS = {"swav": (main_swav, []), "deepclusterv2": (main_deepclusterv2, []), "sce": (main_sce, []),
           "moco": (main_moco, ["x"])}


@pytest.mark.parametrize("name", list(PARSERS))
def test_speed_flags_parse_in_both_spellings(name):
    module, positional = PARSERS[name]
    parser = module.get_args_parser()
    default = parser.parse_args(positional)
    assert (default.device_aug, default.channels_last, default.compile) == (False, False, False)
    for spelling in (["--device-aug", "--channels-last"], ["--device_aug", "--channels_last"]):
        a = parser.parse_args(positional + spelling + ["--compile", "--amp", "bf16"])
        assert a.device_aug and a.channels_last and a.compile and a.amp == "bf16"
    assert parser.parse_args(positional + ["--use_fp16", "true"]).use_fp16 is True
    with pytest.raises(SystemExit):
        parser.parse_args(positional + ["--amp", "fp8"])


def test_autocast_dtype_falls_back_on_cpu_once(capsys):
    args = types.SimpleNamespace(amp="none", use_fp16=True)
    assert autocast_dtype(args, torch.device("cpu")) is None
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "fp32" in out and "--amp bf16" in out
    assert amp_dtype(args) is None  # written back: later amp_dtype calls (scaler, autocast) agree
    args = types.SimpleNamespace(amp="fp16", use_fp16=False)
    assert autocast_dtype(args, "cpu", rank=1) is None and capsys.readouterr().out == ""  # rank 0 prints only
    for amp, fp16, want in (("bf16", False, torch.bfloat16), ("bf16", True, torch.bfloat16), ("none", False, None)):
        args = types.SimpleNamespace(amp=amp, use_fp16=fp16)
        assert autocast_dtype(args, "cpu") is want and amp_dtype(args) is want  # explicit --amp wins
    assert capsys.readouterr().out == ""
    args = types.SimpleNamespace(amp="none", use_fp16=True)
    assert autocast_dtype(args, torch.device("cuda")) is torch.float16 and amp_dtype(args) is torch.float16


def test_cpu_bf16_with_channels_last_turns_onednn_off_with_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)  # put back after the test
    args = types.SimpleNamespace(amp="bf16", use_fp16=False, channels_last=True)
    assert autocast_dtype(args, "cpu") is torch.bfloat16
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "oneDNN is turned off" in out and not torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = True
    for amp, cl, device in (("bf16", False, "cpu"), ("none", True, "cpu"), ("bf16", True, "cuda")):
        assert autocast_dtype(types.SimpleNamespace(amp=amp, use_fp16=False, channels_last=cl), device) is not False
        assert torch.backends.mkldnn.enabled and capsys.readouterr().out == ""  # only that combination, on a CPU


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    def broken_compile(module):
        def call(*args, **kwargs):
            raise RuntimeError("inductor is not available here\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    lin = nn.Linear(3, 2)
    wrapped = maybe_compile(lin, True)
    assert isinstance(wrapped, CompiledOrEager)
    x = torch.randn(4, 3)
    assert torch.equal(wrapped(x), lin(x)) and torch.equal(wrapped(x), lin(x))
    out = capsys.readouterr().out
    assert out.count("warning: --compile failed (RuntimeError: inductor is not available here)") == 1
    assert list(wrapped.parameters()) == list(lin.parameters()) and wrapped.weight is lin.weight
    assert maybe_compile(lin, False) is lin

    def refuses(module):
        raise RuntimeError("dynamo does not support this Python")

    monkeypatch.setattr(torch, "compile", refuses)
    wrapped = maybe_compile(lin, True)
    assert torch.equal(wrapped(x), lin(x)) and "running eagerly" in capsys.readouterr().out


def test_channels_last_and_fused_kwargs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    assert to_channels_last(model, False)[0].weight.is_contiguous()
    assert to_channels_last(model, True)[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fused_kwargs("cpu") == {} and fused_kwargs(torch.device("cuda", 0)) == {"fused": True}


def test_queue_pointer_read_once_and_after_loading():
    q = KeyQueue(8, 4)
    q.enqueue(torch.ones(2, 4))
    state = {k: v.clone() for k, v in q.state_dict().items()}  # ptr 2
    q.enqueue(torch.full((2, 4), 2.0))
    assert int(q.ptr) == 4 and q._host_ptr == 4
    q.load_state_dict(state)  # back to ptr 2: the host copy is dropped and read again
    q.enqueue(torch.full((2, 4), 3.0))
    assert int(q.ptr) == 4 and q.queue[2:4].eq(3).all() and q.queue[:2].eq(1).all()


def _count_host_reads(monkeypatch):
    """Count Python-level tensor -> host conversions (item, int, float, bool, tolist) from now on."""
    counts = collections.Counter()
    for name in ("item", "__int__", "__float__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _name=name, _original=original, **k):
            counts[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


@pytest.fixture(scope="module")
def step_folders(tmp_path_factory):
    """The generated image and video folders the scripts' builds read (bench.common.step_data)."""
    from bench.common import step_data

    return step_data(str(tmp_path_factory.mktemp("bench")), 4, 4)


@pytest.mark.parametrize("method", ["swav", "moco", "sce", "deepclusterv2", "sce_video"])
@pytest.mark.parametrize("device_aug", [False, True])
def test_no_host_sync_inside_training_steps(monkeypatch, step_folders, method, device_aug):
    """Outside the log interval, a step reads nothing back from the device (the queue pointer once, at the first
    enqueue). Python-level conversions are counted around each script's own ``step`` (on the parts its ``build``
    made) and the loader's device half that feeds it; a CUDA run can also use torch.cuda.set_sync_debug_mode."""
    from bench.speed import script_step

    torch.manual_seed(0)
    video = method == "sce_video"  # 2 clips of 2 frames through an r3d_tiny
    step = script_step(method, "r3d_tiny" if video else "resnet18", batch_size=4, sizes=[32, 16], nmb=[2, 2],
                       device=torch.device("cpu"), device_aug=device_aug, amp="none", channels_last=False,
                       compile=False, data=step_folders, frames=2 if video else 0)
    script = sys.modules[{"sce_video": "main_sce"}.get(method, f"main_{method}")]
    calls = []
    real_step = script.step
    monkeypatch.setattr(script, "step", lambda *a: calls.append(a[2]) or real_step(*a))
    step(0)  # first step: the queue pointer is read once
    counts = _count_host_reads(monkeypatch)
    step(1)
    step(2)
    assert sum(counts.values()) == 0, dict(counts)
    assert calls == [0, 1, 2]  # the script's real step ran each time


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_script_runs_with_channels_last_and_bf16(data, tmp_path, name):  # noqa: F811
    extra = ["--channels-last", "--amp", "bf16"] + (["--device-aug"] if name in ("swav", "moco") else [])
    p = run(script_cmd(name, data, tmp_path / name, *extra))
    assert_ok(p)
    assert "iteration 2; checkpoint saved" in p.stdout
    assert "oneDNN is turned off for this run" in p.stdout  # its bf16 channels-last kernels gave NaN at random


def test_bench_command_writes_rows_ratios_and_json(tmp_path, step_folders):
    """``python -m bench.speed`` end to end, tiny: the input pipelines (a), an image and a video method, each with
    and without the device augmentation, their backbone ceilings (the video one an R3D on clips), ratios in the
    table and the JSON."""
    import json

    out = tmp_path / "speed.json"
    p = run([sys.executable, "-m", "bench.speed", "--methods", "moco", "sce_video", "--configs", "base",
             "device_aug+channels_last", "--arch", "resnet_tiny", "--video-arch", "r3d_tiny", "--sizes", "16", "8",
             "--frames", "2", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--threads", "1",
             "--data-images", "2", "--data-passes", "1", "--data", step_folders["images"], "--video-data",
             step_folders["videos"], "--output", str(out)], timeout=600)
    assert_ok(p)
    rows = json.load(open(out))["steps"]
    assert not [r for r in rows if "error" in r], rows
    cells = {(r["method"], r["config"], r["arch"], r["frames"]) for r in rows}
    assert cells == {("moco", "base", "resnet_tiny", 0), ("moco", "device_aug+channels_last", "resnet_tiny", 0),
                     ("sce_video", "base", "r3d_tiny", 2), ("sce_video", "device_aug+channels_last", "r3d_tiny", 2),
                     ("backbone", "base", "resnet_tiny", 0), ("backbone", "channels_last", "resnet_tiny", 0),
                     ("backbone", "base", "r3d_tiny", 2), ("backbone", "channels_last", "r3d_tiny", 2)}
    assert all(r["images_per_s"] > 0 and r["peak_mib"] is not None for r in rows)
    assert "sce_video 2x2x16" in p.stdout and "% of backbone" in p.stdout and "x  " in p.stdout
    data = {(r["pipeline"], r["path"]): r for r in json.load(open(out))["data"]}
    assert data[("SCE video 2x8x224", "ours, split: CPU half")]["vs_reference"] > 0  # against the per-clip path
    assert data[("SwAV 2x224+6x96", "ours, split: CPU half")]["vs_reference"] > 0  # against the official pipeline
    assert "x per-clip" in p.stdout and "x official" in p.stdout
