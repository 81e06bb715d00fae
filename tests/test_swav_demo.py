"""main_swav.py --demo: the output contract (its last two lines are parsed by scripts) on a shortened recipe, and
the random-init figure is the trunk the run started from."""
import json
import re

import torch

import main_swav


def test_demo_last_two_lines_checkpoint_and_initial_weights(tmp_path, monkeypatch, capsys):
    # 10 classes x 30 images: 2 iterations of 128 per epoch, 2 epochs, the queue from epoch 1
    for key, value in {"epochs": 2, "epoch_queue_starts": 1, "freeze_prototypes_niters": 1}.items():
        monkeypatch.setitem(main_swav.DEMO, key, value)
    import src.data.demo
    import src.evaluation.demo

    real = src.data.demo.make_demo_dataset
    small = lambda root: real(root, train_per_class=30, val_per_class=10, workers=1)  # noqa: E731
    monkeypatch.setattr(src.data.demo, "make_demo_dataset", small)
    monkeypatch.setattr(src.evaluation.demo, "make_demo_dataset", small)  # where run_demo looks it up
    built = []  # the state of every SwAVModel when built: the trained one (first), then the random-init one
    real_model = main_swav.SwAVModel

    def recording(*a, **k):
        model = real_model(*a, **k)
        built.append({n: t.clone() for n, t in model.backbone.state_dict().items()})
        return model

    monkeypatch.setattr(main_swav, "SwAVModel", recording)
    args = main_swav.get_args_parser().parse_args(["--demo", "--demo_dir", str(tmp_path / "demo"), "--dump_path",
                                                   str(tmp_path / "run")])
    results = main_swav.run_demo(args)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert re.fullmatch(r"demo kNN top-1 pretrained: \d+\.\d\d%", lines[-2])
    assert re.fullmatch(r"demo kNN top-1 random-init: \d+\.\d\d%", lines[-1])
    assert float(lines[-2].split()[-1][:-1]) == round(results["pretrained"]["best_nn"], 2)
    saved = json.loads((tmp_path / "run" / "demo.json").read_text())
    assert set(saved) >= {"pretrained", "random-init", "seconds"}
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["args"]["arch"] == "resnet_tiny" and ckpt["args"]["size_crops"] == [64, 32]
    # the random-init line evaluates the trunk the training started from; the trained trunk moved away from it
    assert len(built) == 2 and built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])
    trained = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    assert trained.keys() == built[1].keys()
    assert any(not torch.equal(trained[k], built[1][k]) for k in trained if trained[k].is_floating_point())
