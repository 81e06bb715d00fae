"""Fine-tune and evaluate a detectron2 detector from a converted trunk: the detection transfer of MoCo
(He et al. 2020, section 4.2: Faster R-CNN R50-C4 on Pascal VOC, Mask R-CNN R50-C4 on COCO, BN trained and
synchronised across GPUs; facebookresearch/moco ``detection/train_net.py``).

It is detectron2's standard trainer plus the one piece the configs here need: ``Res5ROIHeadsExtraNorm``, the
C4 box head with a norm layer (``MODEL.RESNETS.NORM``) after res5, and an evaluator per dataset (COCO AP for
``coco_*``, VOC07 AP50 / AP for ``voc_*``). Needs detectron2 installed (not a dependency of this project) and
the datasets under ``./datasets`` (or ``$DETECTRON2_DATASETS``) as detectron2 lays them out.

    python -m experiments.convert-detectron2 ../runs/moco/checkpoint.pth.tar ../moco_r50.pkl   # from the repo root
    cd detection
    python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml --num-gpus 8 \\
        MODEL.WEIGHTS ../moco_r50.pkl
    python train_net.py --config-file configs/coco_R_50_C4_2x_moco.yaml --num-gpus 8 MODEL.WEIGHTS ../moco_r50.pkl
    python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml --eval-only \\
        MODEL.WEIGHTS output/model_final.pth
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """``Res5ROIHeads`` whose res5 stage ends with one more norm layer, of ``MODEL.RESNETS.NORM``.

    The weights file has no tensor for it (``roi_heads.res5.norm.*``): it starts from the norm's own init.
    """

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        res5 = ret["res5"]  # nn.Sequential of the res5 bottleneck blocks
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, res5[-1].out_channels))
        return ret


class Trainer(DefaultTrainer):
    """detectron2's trainer with the evaluator chosen from the dataset name."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if "coco" in dataset_name:
            return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
        if "voc" in dataset_name:
            return PascalVOCDetectionEvaluator(dataset_name)
        raise ValueError(f"no evaluator for dataset {dataset_name!r}: expected a coco_* or voc_* dataset")


def setup(args):
    """Config from ``--config-file`` plus the ``KEY VALUE`` overrides, frozen; detectron2's logging and output dir."""
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
