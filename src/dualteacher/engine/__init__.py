"""The engine: a plain iteration loop, evaluation, checkpoints and distributed helpers."""
