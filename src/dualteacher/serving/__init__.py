"""Serving: trained models on new images, without the training engine.

- ``trained``: a checkpoint's models rebuilt without its data (``build_model_from_checkpoint``);
- ``export_format``: an export folder read back, its files checked before use;
- ``segmenter``: ``Segmenter``, the one object that runs a model on images (PyTorch or ONNX
  Runtime, whole / sliding / resize), from a checkpoint or an export (``load_segmenter``,
  ``load_exported``);
- ``inputs``: images in (files, folders, globs, a dataset's unlabelled set) and logit batches
  out, the front half ``suggest`` and ``pseudolabel`` share;
- ``predict``, ``suggest``, ``pseudolabel``, ``export``: what the commands of those names do.

This floor imports models, data, methods, config and the checkpoint format; never the engine.
"""
