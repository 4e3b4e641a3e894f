import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lsmia.attack.losses import max_margin_loss, poincare_loss
from lsmia.config import SmoothingConfig
from lsmia.training.schedules import alpha_at, alpha_trajectory, linear_alpha, reference_alpha, upstream_alpha
from lsmia.training.smoothing import smoothed_cross_entropy


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.5, 1.0])
def test_smoothed_ce_equals_torch_for_non_negative_alpha(alpha):
    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(16, 7, generator=gen), torch.randint(0, 7, (16,), generator=gen)
    ours = smoothed_cross_entropy(logits, targets, alpha)
    assert torch.allclose(ours, F.cross_entropy(logits, targets, label_smoothing=alpha), atol=1e-6)


def test_smoothed_ce_negative_alpha_matches_the_formula():
    logits, targets, alpha = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), -0.05
    log_p = F.log_softmax(logits, 1)
    expected = (1 - alpha) * -log_p[0, 0] + alpha * -log_p[0].mean()
    assert torch.isclose(smoothed_cross_entropy(logits, targets, alpha), expected)
    # negative smoothing rewards pushing non-target classes further down: loss below plain CE
    assert smoothed_cross_entropy(logits, targets, alpha) < F.cross_entropy(logits, targets)


@pytest.mark.parametrize("bad", [1.01, float("nan"), float("inf")])
def test_smoothed_ce_rejects_bad_alpha(bad):
    with pytest.raises(ValueError):
        smoothed_cross_entropy(torch.zeros(1, 3), torch.tensor([0]), bad)


def test_poincare_loss_matches_hand_computation():
    logits, targets = torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0])
    u = logits / 4.0
    v = torch.tensor([[1 - 1e-4, 0.0, 0.0]])
    d = math.acosh(1 + 2 * ((u - v) ** 2).sum() / ((1 - (u**2).sum()) * (1 - (v**2).sum())))
    assert math.isclose(poincare_loss(logits, targets).item(), d, rel_tol=1e-5)
    # more confident in the target class -> smaller distance
    assert poincare_loss(torch.tensor([[9.0, 1.0, 0.0]]), targets) < poincare_loss(logits, targets)


def test_max_margin_loss():
    logits = torch.tensor([[3.0, 5.0, 1.0], [4.0, 1.0, 0.0]])
    assert max_margin_loss(logits, torch.tensor([0, 0])).item() == pytest.approx(((5 - 3) + (1 - 4)) / 2)


def test_reference_schedule_reproduces_the_paper_code_with_its_jump():
    values = [reference_alpha(-0.05, e, 100) for e in range(100)]
    assert values[:50] == [0.0] * 50
    assert values[50] == pytest.approx(-0.05 * 1 / 50)
    assert values[74] == pytest.approx(-0.05 * 25 / 50)  # only half of alpha before the jump
    assert values[75:] == [-0.05] * 25


def test_upstream_schedule_is_the_reference_code_in_absolute_epochs():
    alpha = -0.05
    hundred = [upstream_alpha(alpha, e, 100) for e in range(100)]  # E = 100: ramp over 50..74, jump at 75
    assert hundred[:50] == [0.0] * 50
    assert hundred[50] == pytest.approx(-0.001)  # alpha * 1/50
    assert hundred[74] == pytest.approx(-0.025)  # alpha * 25/50: half of alpha before the jump
    assert hundred[75:] == [alpha] * 25
    assert hundred == [reference_alpha(alpha, e, 100) for e in range(100)]  # the proportional one agrees at 100
    sixty = [upstream_alpha(alpha, e, 60) for e in range(60)]  # E = 60: the ramp divides by 10, never jumps
    assert sixty[:50] == [0.0] * 50
    assert sixty[50] == pytest.approx(-0.005) and sixty[55] == pytest.approx(-0.03)  # alpha * 1/10, * 6/10
    assert sixty[59] == pytest.approx(alpha)  # alpha * 10/10 at the last epoch
    assert [upstream_alpha(alpha, e, 40) for e in range(40)] == [0.0] * 40  # under 50 epochs: never smooths
    assert upstream_alpha(alpha, 74, 120) == pytest.approx(alpha * 25 / 70) and upstream_alpha(alpha, 75, 120) == alpha
    upstream = SmoothingConfig(alpha=alpha, schedule="upstream")
    assert alpha_trajectory(upstream, 60) == sixty
    assert alpha_trajectory(upstream, 20) == [0.0] * 20  # unlike 'reference', which scales with the run
    assert alpha_trajectory(upstream.model_copy(update={"alpha": 0.1}), 20) == [0.1] * 20  # positive: constant


def test_linear_schedule_ends_exactly_at_alpha_and_is_monotone():
    values = [linear_alpha(-0.1, e, 20, 0.25, 0.75) for e in range(20)]
    assert values[:5] == [0.0] * 5
    assert values[15] == -0.1 and values[-1] == -0.1
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert -0.1 < values[14] < 0


def test_alpha_at_applies_the_schedule_only_where_configured():
    neg = SmoothingConfig(alpha=-0.05, schedule="linear")
    assert alpha_trajectory(neg, 8)[0] == 0.0 and alpha_trajectory(neg, 8)[-1] == -0.05
    pos = SmoothingConfig(alpha=0.1, schedule="linear")  # positive alpha is constant, as in the paper
    assert alpha_trajectory(pos, 8) == [0.1] * 8
    both = SmoothingConfig(alpha=0.1, schedule="linear", negative_only=False)
    assert alpha_trajectory(both, 8)[0] == 0.0
    assert alpha_at(SmoothingConfig(alpha=-0.05, schedule="constant"), 0, 8) == -0.05


def test_the_configs_attack_losses_are_the_registry() -> None:
    """A new attack loss is one function and one line of ATTACK_LOSSES; the config's Literal must list it too."""
    from typing import get_args

    from lsmia.attack.losses import ATTACK_LOSSES
    from lsmia.config import AttackConfig

    assert get_args(AttackConfig.model_fields["loss"].annotation) == tuple(ATTACK_LOSSES)
    logits, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    for loss in ATTACK_LOSSES.values():
        assert loss(logits, targets).shape == ()
