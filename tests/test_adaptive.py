"""The adaptive attacker: exact log-space ranking, the logit view that undoes a rescaled target, the unbounded
check, and the target's acceptance of the final samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from lsmia.attack.losses import identity_loss
from lsmia.attack.ppa import raw_confidences, run_attack, select_candidates
from lsmia.attack.result import AttackResult
from lsmia.attack.scoring import LogitView, ScaledLogits, auto_temperature, class_scores, label_scores, margins
from lsmia.attack.shards import merge_shards
from lsmia.attack.target import AttackTarget
from lsmia.config import AttackConfig
from tests.helpers.attack import ColourPrior, MeanColourClassifier, make_cfg

CPU = torch.device("cpu")
SCALE = 180.0  # a linear head x 180: logits as large as a constant alpha -0.05 target's, the same decisions


def attack(
    cfg: AttackConfig,
    target: AttackTarget | None = None,
    targets: Sequence[int] = (0, 3, 4),
    classes: list[int] | None = None,
) -> AttackResult:
    return run_attack(
        cfg, target or MeanColourClassifier(), ColourPrior(), list(targets), CPU, progress=False, classes=classes
    )


def huge_logits() -> torch.Tensor:
    """Five images over four classes at a logit norm of ~5e4: class 0 trails the leader by 300 to 700 logits, so
    its float32 softmax probability is exactly 0 for every image, in a known strict order."""
    gaps = torch.tensor([300.0, 400.0, 500.0, 600.0, 700.0])
    leader = torch.full((5,), 35_000.0)
    return torch.stack([leader - gaps, leader, leader - 20_000, leader - 40_000], dim=1)


def test_softmax_ranking_ties_at_huge_logits_and_the_log_ranking_orders_exactly() -> None:
    logits = huge_logits()
    assert 4e4 < float(logits.norm(dim=1).mean()) < 6e4
    published = class_scores([logits, logits], "softmax", "probability")[:, 0]
    exact = class_scores([logits, logits], "log", "probability")[:, 0]
    assert published.tolist() == [0.0] * 5  # every image ties: topk would hand out pool indices in order
    assert exact.tolist() == pytest.approx([-300.0, -400.0, -500.0, -600.0, -700.0])  # log p = -gap, exactly
    assert select_candidates(exact.view(-1, 1), [0], 3).tolist() == [[0, 1, 2]]
    reversed_pool = exact.flip(0).view(-1, 1)
    assert select_candidates(reversed_pool, [0], 3).tolist() == [[4, 3, 2]]  # order follows the scores, not index


def test_log_ranking_is_the_log_of_the_mean_probability_where_nothing_underflows() -> None:
    gen = torch.Generator().manual_seed(0)
    versions = [torch.randn(50, 7, generator=gen) * 3 for _ in range(4)]
    published = class_scores(versions, "softmax", "probability")
    exact = class_scores(versions, "log", "probability")
    assert torch.allclose(exact.exp(), published.double(), rtol=1e-6)
    assert torch.equal(published.argsort(0), exact.argsort(0))  # the same ranking of every class
    draws = torch.stack(versions)  # [draws, rows, C]
    labels = torch.randint(0, 7, (50,), generator=gen)
    row_published = label_scores(draws, labels, "softmax", "probability")
    row_exact = label_scores(draws, labels, "log", "probability")
    assert torch.allclose(row_exact.exp(), row_published.double(), rtol=1e-6)


def test_margin_is_the_class_logit_minus_the_best_other() -> None:
    logits = torch.tensor([[3.0, 1.0, -2.0], [0.0, 5.0, 5.0]])
    assert margins(logits).tolist() == [[2.0, -2.0, -5.0], [-5.0, 0.0, 0.0]]


@pytest.mark.parametrize("setting", ["auto", "standardise"])
def test_the_view_makes_scores_invariant_to_a_rescaled_target(setting: str) -> None:
    logits = huge_logits() / 100

    def view_of(values: torch.Tensor) -> LogitView:
        return LogitView(auto_temperature(values)) if setting == "auto" else LogitView(standardise=True)

    reference = class_scores([view_of(logits)(logits)], "log", "probability")
    for c in (26.0, SCALE):
        scaled = logits * c
        assert torch.allclose(view_of(scaled)(scaled), view_of(logits)(logits), rtol=1e-5)
        assert torch.allclose(class_scores([view_of(scaled)(scaled)], "log", "probability"), reference, rtol=1e-5)


def test_auto_temperature_is_the_mean_per_image_std() -> None:
    logits = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    assert auto_temperature(logits) == pytest.approx(2.0)
    assert auto_temperature(logits * 180) == pytest.approx(360.0)


def logit_gradient(loss: str, logits: torch.Tensor, labels: torch.Tensor, view: LogitView) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    identity_loss(loss)(view(logits), labels).backward()
    assert logits.grad is not None
    return logits.grad


@pytest.mark.parametrize("loss", ["poincare", "max_margin", "logit"])
def test_the_temperature_keeps_scale_free_losses_gradient_direction(loss: str) -> None:
    logits, labels = huge_logits(), torch.zeros(5, dtype=torch.int64)
    raw = logit_gradient(loss, logits, labels, LogitView())
    tempered = logit_gradient(loss, logits, labels, LogitView(auto_temperature(logits)))
    cosine = F.cosine_similarity(raw.flatten(), tempered.flatten(), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-5)


def test_the_temperature_unmasks_cross_entropy() -> None:
    # the leader is class 1; the attack wants class 0, which trails by 300-700 logits; and class 1, which leads
    logits = huge_logits()
    wants_leader = torch.ones(5, dtype=torch.int64)
    raw = logit_gradient("ce", logits, wants_leader, LogitView())
    assert raw.abs().max() == 0.0  # float32 softmax saturates: no gradient at all, on any class
    tempered = logit_gradient("ce", logits, wants_leader, LogitView(auto_temperature(logits)))
    assert tempered.abs().max() > 1e-6  # the attacker who knows the scale still gets a direction


def test_adaptive_attack_is_invariant_to_a_rescaled_target_and_the_published_one_is_not() -> None:
    target = MeanColourClassifier()
    scaled = ScaledLogits(MeanColourClassifier(), SCALE)
    cfg = make_cfg(steps=10, temperature="auto")
    plain, blown_up = attack(cfg, target), attack(cfg, scaled)
    assert torch.allclose(plain.all_latents, blown_up.all_latents, atol=1e-4)  # the same candidates, the same path
    assert torch.allclose(plain.final_latents, blown_up.final_latents, atol=1e-4)  # and the same final selection
    assert plain.final_targets.tolist() == blown_up.final_targets.tolist()
    published = make_cfg(steps=10, ranking="softmax")
    assert not torch.allclose(attack(published, target).final_latents, attack(published, scaled).final_latents)


def test_target_logit_scale_is_the_negative_control() -> None:
    cfg = make_cfg(steps=10, temperature="auto")
    control = attack(cfg.model_copy(update={"target_logit_scale": SCALE}))
    scaled = attack(cfg, ScaledLogits(MeanColourClassifier(), SCALE))
    assert torch.equal(control.final_latents, scaled.final_latents)
    assert control.meta["attacker"]["target_logit_scale"] == SCALE
    assert control.meta["attacker"]["kind"] == "adaptive"
    assert attack(make_cfg(steps=1, ranking="softmax")).meta["attacker"]["kind"] == "published"


def test_acceptance_is_whether_the_target_says_the_class() -> None:
    # mean colours chosen by hand: red (class 0 wins), dark red (class 1 wins), mid-grey with a faint green
    # (class 2 wins, barely); asked for classes 0, 0 and 3, the target accepts only the first
    colours = torch.tensor([[1.0, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.6, 0.5]])
    images = (colours.view(3, 3, 1, 1).expand(3, 3, 8, 8) * 255).round().to(torch.uint8)
    labels = torch.tensor([0, 0, 3])
    confidence, accepted = raw_confidences(MeanColourClassifier(), images, labels, torch.arange(3), 3, 2, CPU)
    assert accepted.tolist() == [1.0, 0.0, 0.0]
    logits = MeanColourClassifier()(images.float() / 255)
    assert confidence.tolist() == pytest.approx(torch.softmax(logits, 1)[torch.arange(3), labels].tolist())


def test_until_accept_goes_on_until_the_target_accepts_and_reports_how_far() -> None:
    # no selection (the pool is the candidates), so most rows start on another class; some rows of this toy
    # saturate the prior's sigmoid and can never be accepted, so one batch runs to the cap
    cfg = make_cfg(pool_size=6, steps=1, lr=0.3, until_accept=0.5, max_steps=400, accept_check_every=5)
    reach = attack(cfg).meta["until_accept"]
    assert reach["goal"] == 0.5 and reach["max_steps"] == 400  # the stuck batch stops at the cap
    assert 1 < reach["mean_steps"] < 400  # the others went on past one step and stopped at the goal
    assert 0 < reach["accepted"] < 1
    assert "until_accept" not in attack(make_cfg(pool_size=6, steps=1)).meta  # the published budget: exactly steps


def test_until_accept_shards_merge_to_the_unsharded_attack() -> None:
    cfg = make_cfg(pool_size=6, steps=2, lr=0.02, until_accept=0.9, max_steps=60, accept_check_every=3)
    whole = attack(cfg)
    parts = [attack(cfg, classes=[0]), attack(cfg, classes=[3, 4])]
    merged = merge_shards(parts)
    assert torch.equal(whole.final_latents, merged.final_latents)
    assert whole.meta["until_accept"] == merged.meta["until_accept"]
    assert whole.meta["final_target_acceptance_raw"] == merged.meta["final_target_acceptance_raw"]


def test_temperature_must_be_positive_and_finite() -> None:
    from lsmia.config import build_config
    from lsmia.errors import LsmiaError

    for bad in (0, -1.0, math.inf, "hot"):
        with pytest.raises(LsmiaError, match=r"attack\.temperature"):
            build_config({"attack": {"temperature": bad}})
    assert build_config({"attack": {"temperature": "auto"}}).attack.temperature == "auto"
    assert build_config({"attack": {"temperature": 2}}).attack.temperature == 2.0


def test_ranking_check_measures_how_far_the_softmax_selection_degenerates() -> None:
    from lsmia.experiments.ranking_check import selection_agreement

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 20, generator=gen) * 3  # 20 classes, 10 candidates for each of 5
    calm = selection_agreement((logits, logits.flip(0)), [0, 1, 2, 3, 4], 10)
    assert calm["agreement"] == 1.0 and calm["nonzero_scores_per_class"] == 40.0  # nothing underflows
    huge = selection_agreement((logits * 2_000, logits.flip(0) * 2_000), [0, 1, 2, 3, 4], 10)
    assert huge["nonzero_scores_per_class"] == 4.0 and huge["agreement"] == pytest.approx(0.54)  # ties at 0
    assert huge["distinct_starts_published"] < huge["distinct_starts_exact"]  # the same block for every class
