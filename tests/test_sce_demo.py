"""main_sce.py --demo: output contract (last two lines parsed by scripts), demo.json, a checkpoint eval.knn reads,
and the random-init trunk really is the run's initial weights (a shortened recipe here)."""
import argparse
import json
import re

import torch

import main_sce


def test_demo_last_two_lines_checkpoint_and_initial_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(main_sce.DEMO, "epochs", 1)
    import src.data.demo
    import src.evaluation.demo

    real = src.data.demo.make_demo_dataset
    small = lambda root: real(root, train_per_class=30, val_per_class=10, workers=1)  # noqa: E731
    monkeypatch.setattr(src.data.demo, "make_demo_dataset", small)
    monkeypatch.setattr(src.evaluation.demo, "make_demo_dataset", small)  # where run_demo looks it up
    args = main_sce.get_args_parser().parse_args(
        ["--demo", "--demo_dir", str(tmp_path / "demo"), "--dump_path", str(tmp_path / "run")])
    results = main_sce.run_demo(args)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert re.fullmatch(r"demo kNN top-1 pretrained: \d+\.\d\d%", lines[-2])
    assert re.fullmatch(r"demo kNN top-1 random-init: \d+\.\d\d%", lines[-1])
    assert float(lines[-2].split()[-1][:-1]) == round(results["pretrained"]["best_nn"], 2)
    assert float(lines[-1].split()[-1][:-1]) == round(results["random-init"]["best_nn"], 2)
    saved = json.loads((tmp_path / "run" / "demo.json").read_text())
    assert set(saved) >= {"pretrained", "random-init", "seconds"}
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["args"]["arch"] == "resnet_tiny"
    # the trunk was trained: its weights differ from the seeded initial weights the random-init line uses
    main_sce.dist.seed_everything(args.seed, 0)
    init = main_sce.SCE(args.arch, dim=args.feat_dim, proj_hidden_dim=args.proj_hidden_dim,
                        pred_hidden_dim=args.pred_hidden_dim, queue_size=args.queue_size,
                        cifar_stem=args.cifar_stem).trunk.state_dict()
    trained = {k[len("trunk."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("trunk.")}
    assert trained.keys() == init.keys()
    assert any(not torch.equal(trained[k], init[k]) for k in init if init[k].is_floating_point())
    # the contract figure is Best-NN, the protocol of eval.knn: evaluating the checkpoint again gives the same number
    import eval.knn as knn
    kargs = argparse.ArgumentParser(parents=[knn.get_args_parser()]).parse_args(
        [str(tmp_path / "demo"), "--pretrained", str(tmp_path / "run" / "checkpoint.pth.tar"), "--resize", "64",
         "--crop-size", "64", "-j", "1", "--device", "cpu", "--output-json", str(tmp_path / "knn.json")])
    assert round(knn.main(kargs)["best_nn"], 2) == float(lines[-2].split()[-1][:-1])
