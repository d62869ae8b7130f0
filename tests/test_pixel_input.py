"""Pixels as the INT8 input (edgecls.backends.pixel_input): the first convolution takes the
normalisation, checked against the unfolded torch model (the oracle), and refused where
folding would change the model's answers."""
from __future__ import annotations

import numpy as np
import pytest

import torch

from edgecls.backends.pixel_input import (CENTRE, fold, input_range, pixel_inputs,
                                          pixel_spec)
from edgecls.imaging.datasets import CalibrationSet
from edgecls.imaging.preprocess import to_model_input
from edgecls.spec import ModelSpec


def _net(padding: int):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=padding),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


def _spec(mean, std) -> ModelSpec:
    return ModelSpec(name="tiny", architecture="tests.tiny", num_classes=5,
                     labels=[str(i) for i in range(5)], input_size=(32, 32), resize=32,
                     mean=mean, std=std, weights="random")


@pytest.mark.parametrize("mean,std", [((0.5,) * 3, (0.5,) * 3),
                                      ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_without_padding_the_fold_is_exact_for_any_normalisation(mean, std):
    spec = _spec(mean, std)
    model = _net(padding=0)
    folded = fold(model, spec)
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(to_model_input(pixels, spec))).numpy()
        got = folded(torch.from_numpy(to_model_input(pixels, pixel_spec(spec)))).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # what the folded model is fed: the pixels less 128 on one grid, which int8 holds exactly
    step = 1 / (255 * np.mean(std))
    x = to_model_input(pixels, pixel_spec(spec))
    np.testing.assert_allclose(x, (pixels.transpose(0, 3, 1, 2).astype(np.float32) - CENTRE) * step,
                               rtol=1e-6)
    assert input_range(pixel_spec(spec)) == pytest.approx((-128 * step, 127 * step))
    if len(set(std)) == 1:           # one std: the weights are the model's own
        assert torch.equal(folded[0].weight, model[0].weight)


def test_zero_padding_is_folded_for_mean_one_half_and_refused_for_imagenet_mean():
    """A padded zero of pixels - 128 stands for pixel 128: half a level from mean 0.5, 4-24
    levels from ImageNet's mean, which moves the model's answers (measured in float)."""
    model = _net(padding=1)
    half = _spec((0.5,) * 3, (0.5,) * 3)
    imagenet = _spec((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    calibration = CalibrationSet.from_source("photos", half, size=8)
    assert pixel_inputs([model], half, calibration) is not None
    assert pixel_inputs([model], imagenet, calibration) is None


def test_a_model_whose_first_op_is_not_a_convolution_keeps_its_input():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net(padding=0)

        def forward(self, x):
            return self.net(x * 2)

    spec = _spec((0.5,) * 3, (0.5,) * 3)
    assert fold(Scaled().eval(), spec) is None
