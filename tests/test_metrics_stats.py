"""Exact values of the metric formulas on hand-made inputs: accuracy, δ_eval, FID, PRDC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from lsmia.errors import LsmiaError
from lsmia.metrics import (
    attack_accuracy,
    delta_eval,
    delta_eval_per_target,
    extract_features,
    feature_fid,
    frechet_distance,
    prdc,
    prdc_per_class,
)
from lsmia.metrics.fid import trace_sqrt_from_covariances, trace_sqrt_from_samples


class PixelLogits(nn.Module):
    """Features are the flattened pixels; the logits are the features themselves."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def logits_as_images(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor(rows).view(len(rows), 3, 1, width)


def test_accuracy_top1_top5_on_known_logits() -> None:
    images = logits_as_images(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 0 ranks 1st: top-1 hit
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5],  # target 2 ranks 2nd: top-5 hit only
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 5 ranks last: miss
            [0.2, 0.3, 0.9, 0.1, 0.5, 0.4],  # target 3 ranks last: miss
        ],
        width=2,
    )
    acc = attack_accuracy(PixelLogits(), images, torch.tensor([0, 2, 5, 3]), batch_size=3)
    assert acc == {"acc1": 0.25, "acc5": 0.5}


def test_accuracy_converts_uint8_with_division_by_255() -> None:
    images = torch.tensor([[10, 200, 30], [250, 5, 6]], dtype=torch.uint8).view(2, 3, 1, 1)
    feats = extract_features(PixelLogits(), images)
    assert torch.allclose(feats, images.view(2, 3).float() / 255)
    assert attack_accuracy(PixelLogits(), images, torch.tensor([1, 1])) == {"acc1": 0.5, "acc5": 1.0}


def test_acc5_is_top_c_when_fewer_than_five_classes() -> None:
    images = logits_as_images([[0.9, 0.5, 0.1]], width=1)
    assert attack_accuracy(PixelLogits(), images, torch.tensor([2])) == {"acc1": 0.0, "acc5": 1.0}


def test_accuracy_restores_training_mode_and_rejects_bad_targets() -> None:
    model = PixelLogits().train()
    images = logits_as_images([[0.9, 0.5, 0.1]], width=1)
    attack_accuracy(model, images, torch.tensor([0]))
    assert model.training
    with pytest.raises(LsmiaError, match="targets must lie"):
        attack_accuracy(model, images, torch.tensor([3]))
    with pytest.raises(LsmiaError, match="one target per image"):
        attack_accuracy(model, images, torch.tensor([0, 1]))


def test_delta_eval_uses_nearest_training_point_of_the_target_class() -> None:
    train = torch.tensor([[0.0, 0.0], [4.0, 0.0], [10.0, 10.0]])
    train_labels = torch.tensor([0, 0, 1])
    samples = torch.tensor([[1.0, 0.0], [3.0, 1.0], [10.0, 13.0], [9.0, 10.0]])
    targets = torch.tensor([0, 0, 1, 0])
    # squared distances 1, 2, 9 and 125: the last sample is beside class 1 but targets class 0
    assert delta_eval(samples, targets, train, train_labels) == pytest.approx((1 + 2 + 9 + 125) / 4)
    per_target = delta_eval_per_target(samples, targets, train, train_labels)
    assert per_target == pytest.approx({0: (1 + 2 + 125) / 3, 1: 9.0})


def test_delta_eval_rejects_a_target_without_training_images() -> None:
    with pytest.raises(LsmiaError, match="class 2 has no training images"):
        delta_eval(torch.zeros(1, 2), torch.tensor([2]), torch.zeros(2, 2), torch.tensor([0, 1]))


def test_fid_of_identical_sets_is_zero() -> None:
    feats = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    images = torch.rand(20, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    assert feature_fid(PixelLogits(), images, images.clone()) == pytest.approx(0.0, abs=1e-6)


def test_fid_closed_form_for_a_scaled_and_shifted_copy() -> None:
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)).double()
    shift = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    y = 2 * x + shift
    # Σ_y = 4 Σ_x, so tr(Σx + Σy - 2 (Σx Σy)^½) = tr(Σx); plus ||μx - μy||²
    expected = (x.mean(0) - y.mean(0)).pow(2).sum() + torch.cov(x.T).trace()
    assert frechet_distance(x, y) == pytest.approx(expected.item(), rel=1e-6)


def test_fid_closed_form_with_fewer_samples_than_dimensions() -> None:
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)).double()
    y = 2 * x + torch.arange(8, dtype=torch.float64)
    expected = (x.mean(0) - y.mean(0)).pow(2).sum() + torch.cov(x.T).trace()
    assert frechet_distance(x, y) == pytest.approx(expected.item(), rel=1e-9)


def test_trace_sqrt_from_samples_agrees_with_scipy_sqrtm() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=gen).double().numpy()
    b = (torch.randn(30, 6, generator=gen) @ torch.randn(6, 6, generator=gen)).double().numpy()
    from_samples = trace_sqrt_from_samples(a - a.mean(0), b - b.mean(0))
    from_covariances = trace_sqrt_from_covariances(np.cov(a, rowvar=False), np.cov(b, rowvar=False), eps=1e-6)
    assert from_samples == pytest.approx(from_covariances, rel=1e-8)


def test_fid_of_two_identity_gaussians_is_the_squared_mean_distance() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=gen)
    b = torch.randn(20000, 2, generator=gen)
    a, b = a - a.mean(0), b - b.mean(0) + torch.tensor([3.0, 4.0])  # exact means, sampled covariances
    assert frechet_distance(a, b) == pytest.approx(25.0, abs=0.01)


def test_fid_survives_singular_covariances_and_rejects_single_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    value = frechet_distance(torch.randn(3, 10, generator=gen), torch.randn(4, 10, generator=gen))
    assert value > 0 and torch.isfinite(torch.tensor(value))
    with pytest.raises(LsmiaError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))


def points(xs: list[float]) -> torch.Tensor:
    return torch.tensor([[x, 0.0] for x in xs])


def test_prdc_matches_hand_computed_values() -> None:
    # real radii (1-NN, self excluded): 1, 1, 1, 1, 2; fake radii: 0.1, 0.1, 2.5, 7.1
    real, fake = points([0, 1, 2, 3, 5]), points([0.3, 0.4, 2.9, 10])
    got = prdc(real, fake, k=1)
    assert got["precision"] == pytest.approx(3 / 4)  # 10 lies in no real ball
    assert got["recall"] == pytest.approx(4 / 5)  # 0 lies in no fake ball
    assert got["density"] == pytest.approx(6 / 4)  # 2 + 2 + 2 + 0 real balls per fake
    assert got["coverage"] == pytest.approx(4 / 5)  # the ball of 5 (radius 2) holds no fake


def test_prdc_of_identical_sets() -> None:
    feats = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    got = prdc(feats, feats.clone(), k=3)
    assert (got["precision"], got["recall"], got["coverage"]) == (1.0, 1.0, 1.0)


def test_prdc_needs_more_samples_than_k() -> None:
    with pytest.raises(LsmiaError, match="prdc_k"):
        prdc(points([0, 1, 2]), points([0, 1, 2, 3]), k=3)


def labelled_clusters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    real = torch.cat([torch.randn(8, 2, generator=gen) + 10 * c for c in range(3)])
    real_labels = torch.arange(3).repeat_interleave(8)
    offsets = torch.tensor([0.0, 0.5, 50.0])  # class 2's fakes are far away: precision 0
    fake = torch.cat([torch.randn(6, 2, generator=gen) + 10 * c + offsets[c] for c in range(3)])
    fake_labels = torch.arange(3).repeat_interleave(6)
    return real, real_labels, fake, fake_labels


def test_prdc_per_class_averages_exactly_the_given_classes() -> None:
    real, real_labels, fake, fake_labels = labelled_clusters()
    single = [prdc(real[real_labels == c], fake[fake_labels == c], k=3) for c in range(3)]
    got = prdc_per_class(real, real_labels, fake, fake_labels, classes=[0, 1], k=3)
    for key in got:
        assert got[key] == pytest.approx((single[0][key] + single[1][key]) / 2)
    assert prdc_per_class(real, real_labels, fake, fake_labels, classes=[2], k=3) == pytest.approx(single[2])
    assert single[2]["precision"] == 0.0 and single[0]["precision"] > 0.0


def test_prdc_per_class_clamps_k_and_skips_classes_without_radii() -> None:
    real, real_labels = points([0, 1, 5, 6, 7]), torch.tensor([0, 0, 1, 1, 1])
    fake, fake_labels = points([0.2, 0.9, 5.5]), torch.tensor([0, 0, 1])
    with pytest.warns(UserWarning, match="skips class 1"):
        got = prdc_per_class(real, real_labels, fake, fake_labels, classes=[0, 1], k=3)
    assert got == pytest.approx(prdc(points([0, 1]), points([0.2, 0.9]), k=1))
    with pytest.warns(UserWarning), pytest.raises(LsmiaError, match="final_samples"):
        prdc_per_class(real, real_labels, fake, fake_labels, classes=[1], k=3)
