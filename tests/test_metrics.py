import math

import pytest
import torch

from dualteacher.metrics import ConfusionMatrix


def test_confusion_matrix_hand_computed_with_ignore():
    # 3 classes; target 255 pixels are ignored whatever the prediction.
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = target, cols = prediction, over the 6 scored pixels
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = cm.compute()
    # IoU_c = TP / (TP + FP + FN): class 0: 1/(1+1+1)=1/3, class 1: 2/(2+1+0)=2/3, 2: 1/(1+0+1)
    assert m.iou == pytest.approx([100 / 3, 200 / 3, 50.0])
    assert m.miou == pytest.approx((100 / 3 + 200 / 3 + 50) / 3)
    assert m.acc == pytest.approx(400 / 6)
    assert m.num_pixels == 6


def test_dataset_level_not_per_image_and_absent_class():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    cm.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    m = cm.compute()
    # class 0: TP 2, FN 1 -> 2/3 ; class 1: TP 2, FP 1 -> 2/3 ; classes 2, 3 never seen -> NaN
    assert m.iou[0] == pytest.approx(200 / 3) and m.iou[1] == pytest.approx(200 / 3)
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[3])
    assert m.miou == pytest.approx(200 / 3)  # NaN classes left out of the mean


def test_out_of_range_target_is_an_error():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
