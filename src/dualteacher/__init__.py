"""dualteacher: semi-supervised semantic segmentation with Dual Teacher and its baselines.

The Python API mirrors the CLI::

    from dualteacher import load_config, train, evaluate_checkpoint
    cfg = load_config("configs/demo.yaml", ["train.steps=100"])
    result = train(cfg)          # dualteacher train configs/demo.yaml train.steps=100
    evaluate_checkpoint(result.out_dir + "/best.pt")   # dualteacher eval RUN/best.pt
    suggest(result.out_dir + "/latest.pt", "runs/next", top=20)  # dualteacher suggest ...
    export_checkpoint(result.out_dir + "/best.pt", "exported", "safetensors,onnx")
    model = load_exported("exported", runtime="onnx")  # dualteacher predict exported ...
    ids = model.predict(rgb_uint8_array)                # (H, W) class ids

Heavy modules (torch, models) are imported lazily so ``import dualteacher`` stays fast. Where
everything lives: ``docs/architecture.md``.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "Config": "dualteacher.config",
    "load_config": "dualteacher.config",
    "train": "dualteacher.study.train",
    "TrainResult": "dualteacher.engine.trainer",
    "evaluate_checkpoint": "dualteacher.engine.evaluate",
    "export_checkpoint": "dualteacher.serving.export",
    "load_exported": "dualteacher.serving.segmenter",
    "run_demo": "dualteacher.study.demo",
    "write_report": "dualteacher.study.report",
    "suggest": "dualteacher.serving.suggest",
    "pseudolabel": "dualteacher.serving.pseudolabel",
    "write_demo_folder": "dualteacher.data.demo",
    "build_model": "dualteacher.models",
    "list_models": "dualteacher.models",
    "DualTeacherError": "dualteacher.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dualteacher' has no attribute {name!r}")
