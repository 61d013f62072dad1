"""Supervised baseline: cross-entropy on the labelled images only."""

from __future__ import annotations

from dualteacher.methods.base import Batch, Method, StepInfo


class Supervised(Method):
    name = "supervised"
    uses_unlabeled = False

    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        loss_x = self.supervised_loss(self.student_forward(batch_x["image"]), batch_x["mask"])
        return {"loss": loss_x, "loss_x": loss_x}
