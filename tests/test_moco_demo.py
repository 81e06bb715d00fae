"""The demo's output contract: its last two lines are parsed by scripts (a shortened recipe here)."""
import json
import re

import main_moco


def test_demo_last_two_lines_and_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(main_moco.DEMO, "epochs", 1)
    import src.data.demo
    import src.evaluation.demo

    real = src.data.demo.make_demo_dataset
    small = lambda root: real(root, train_per_class=30, val_per_class=10, workers=1)  # noqa: E731
    monkeypatch.setattr(src.data.demo, "make_demo_dataset", small)
    monkeypatch.setattr(src.evaluation.demo, "make_demo_dataset", small)  # where run_demo looks it up
    args = main_moco.get_args_parser().parse_args(
        ["--demo", "--demo-dir", str(tmp_path / "demo"), "--output-dir", str(tmp_path / "run")])
    results = main_moco.run_demo(args)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert re.fullmatch(r"demo kNN top-1 pretrained: \d+\.\d\d%", lines[-2])
    assert re.fullmatch(r"demo kNN top-1 random-init: \d+\.\d\d%", lines[-1])
    assert float(lines[-2].split()[-1][:-1]) == round(results["pretrained"]["best_nn"], 2)
    assert (tmp_path / "run" / "checkpoint.pth.tar").exists()
    saved = json.loads((tmp_path / "run" / "demo.json").read_text())
    assert set(saved) >= {"pretrained", "random-init", "seconds"}
