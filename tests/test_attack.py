"""Tests of the batched Plug & Play Attack against a tiny prior and tiny targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lsmia.attack.losses import poincare_loss
from lsmia.attack.ppa import (
    Schedule,
    StepDiagnostics,
    keep_best,
    latent_scale,
    optimise,
    resolve_targets,
    row_batches,
    run_attack,
    select_candidates,
    stage_generators,
)
from lsmia.attack.result import AttackResult
from lsmia.attack.scoring import ScaledLogits
from lsmia.attack.target import AttackTarget
from lsmia.config import AttackConfig
from lsmia.data.augment import resize
from lsmia.errors import LsmiaError
from lsmia.models.classifiers import build_classifier
from lsmia.models.generator import DCGANPrior, Generator, TorchScriptPrior, load_prior
from tests.helpers.attack import ColourPrior, MeanColourClassifier, make_cfg

CPU = torch.device("cpu")


def attack(cfg: AttackConfig, targets: list[int] | None = None, schedule: Schedule = "batched") -> AttackResult:
    torch.manual_seed(1234)  # the attack must not depend on the global RNG; tests below check that too
    return run_attack(
        cfg, MeanColourClassifier(), ColourPrior(), targets or [0, 3, 4], CPU, progress=False, schedule=schedule
    )


def test_the_classifier_and_the_attack_s_wrapper_are_attack_targets() -> None:
    """They satisfy ``AttackTarget`` structurally (mypy checks these annotated assignments) with what the attack
    reads: the class count, the input size and logits of that width."""
    classifier: AttackTarget = build_classifier("smallresnet", 5, 16, width=4).eval()
    scaled: AttackTarget = ScaledLogits(classifier, 3.0)
    images = torch.rand(2, 3, 16, 16)
    for target in (classifier, scaled):
        assert (target.num_classes, target.image_size) == (5, 16)
        assert target(images).shape == (2, 5)
    assert torch.allclose(scaled(images), 3.0 * classifier(images))


def confidence(target: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        probs = torch.softmax(target(images_u8.float() / 255), dim=1)
    return probs.gather(1, labels.view(-1, 1)).squeeze(1)


def brute_force_top(cfg: AttackConfig, target_class: int) -> torch.Tensor:
    """The pool latents a class should start from, scored one by one in Python."""
    prior, target = ColourPrior(), MeanColourClassifier()
    pool = prior.sample_latents(cfg.pool_size, generator=stage_generators(cfg.seed)[0])
    scores = []
    with torch.no_grad():
        for z in pool:
            image = prior(z.view(1, -1))
            p = (
                torch.softmax(target(image), 1)[0, target_class]
                + torch.softmax(target(image.flip(-1)), 1)[0, target_class]
            )
            scores.append(float(p) / 2)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return pool[order[: cfg.candidates]]


def test_initial_selection_takes_each_classes_top_latents() -> None:
    cfg = make_cfg(steps=0)
    result = attack(cfg)
    per_class = result.all_latents.view(3, cfg.candidates, -1)
    for row, target_class in enumerate([0, 3, 4]):
        assert torch.equal(per_class[row], brute_force_top(cfg, target_class))


def test_no_latent_twice_within_a_class_but_shared_across_classes_allowed() -> None:
    scores = torch.tensor([[0.9, 0.8], [0.7, 0.95], [0.1, 0.2], [0.5, 0.1]])
    chosen = select_candidates(scores, [0, 1], 3)
    assert chosen.tolist() == [[0, 1, 3], [1, 0, 2]]
    result = attack(make_cfg(steps=0, candidates=20, pool_size=40))
    for per_class in result.all_latents.view(3, 20, -1):
        assert len(torch.unique(per_class, dim=0)) == 20


def test_optimisation_raises_target_confidence() -> None:
    cfg = make_cfg(candidates=16, pool_size=32)  # a small pool leaves weak starting candidates
    before, after = attack(cfg.model_copy(update={"steps": 0})), attack(cfg)
    target = MeanColourClassifier()
    conf_before = confidence(target, before.all_images, before.all_targets)
    conf_after = confidence(target, after.all_images, after.all_targets)
    assert conf_after.mean() > conf_before.mean() + 0.25
    assert (conf_after > conf_before).float().mean() > 0.75


@pytest.mark.parametrize("loss", ["poincare", "ce", "max_margin"])
def test_every_loss_raises_confidence(loss: str) -> None:
    cfg = make_cfg(loss=loss, candidates=16, pool_size=32)
    before, after = attack(cfg.model_copy(update={"steps": 0})), attack(cfg)
    target = MeanColourClassifier()
    assert torch.isfinite(after.all_latents).all()
    gain = (
        confidence(target, after.all_images, after.all_targets).mean()
        - confidence(target, before.all_images, before.all_targets).mean()
    )
    assert gain > 0.25


def test_final_selection_keeps_best_candidates_per_class() -> None:
    # A full-size crop and a flip leave the mean colour unchanged, so the final score is the plain confidence
    # (its exact log with the default log ranking; the probability itself as PPA published it).
    cfg = make_cfg(final_crop_scale=(1.0, 1.0), final_crop_ratio=(1.0, 1.0), steps=5)
    result = attack(cfg)
    published = attack(cfg.model_copy(update={"ranking": "softmax"}))
    assert torch.equal(published.final_latents, result.final_latents)  # nothing underflows: the same selection
    target = MeanColourClassifier()
    with torch.no_grad():
        probs = torch.softmax(target(ColourPrior()(result.all_latents)), 1)
    scores = probs.gather(1, result.all_targets.view(-1, 1)).squeeze(1).view(3, cfg.candidates)
    expected = scores.sort(dim=1, descending=True).values[:, : cfg.final_samples].flatten()
    assert torch.allclose(result.final_scores.exp(), expected, atol=1e-5)
    assert torch.allclose(published.final_scores, expected, atol=1e-5)
    assert result.final_targets.tolist() == [0] * 3 + [3] * 3 + [4] * 3
    for latent, label in zip(result.final_latents, result.final_targets, strict=False):
        assert any(
            torch.equal(latent, a) for a, t in zip(result.all_latents, result.all_targets, strict=False) if t == label
        )


def test_keep_best_indexes_each_target_block() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2])
    assert keep_best(scores, 2, 2).tolist() == [1, 2, 4, 3]


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    cfg = make_cfg(steps=5)
    first, second, other = attack(cfg), attack(cfg), attack(cfg.model_copy(update={"seed": 1}))
    for name in ["all_latents", "all_images", "final_latents", "final_scores", "final_targets"]:
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert not torch.allclose(first.all_latents, other.all_latents)


def test_output_shapes_dtypes_and_meta_with_a_real_classifier() -> None:
    cfg = make_cfg(steps=2, candidates=5, final_samples=2, pool_size=16)
    target = build_classifier("smallresnet", num_classes=7, image_size=16, width=4)
    target.train()
    result = run_attack(cfg, target, ColourPrior(), [6, 2], CPU, progress=False)
    assert result.targets == [6, 2]
    assert result.all_images.shape == (10, 3, 16, 16) and result.all_images.dtype == torch.uint8
    assert result.all_latents.shape == (10, 4) and result.all_targets.dtype == torch.int64
    assert result.all_targets.tolist() == [6] * 5 + [2] * 5
    assert result.final_images.shape == (4, 3, 16, 16) and result.final_images.dtype == torch.uint8
    assert result.final_latents.shape == (4, 4) and result.final_scores.shape == (4,)
    assert result.final_targets.tolist() == [6, 6, 2, 2]
    assert (result.final_scores <= 0).all()  # log probabilities
    assert {"selection_s", "optimisation_s", "final_selection_s"} <= set(result.meta["timings"])
    assert "num_latents" in result.meta
    assert result.meta["num_latents"] == 10 and result.meta["config"]["steps"] == 2
    assert not target.training
    assert all(p.requires_grad and p.grad is None for p in target.parameters())


def test_images_are_the_rounded_prior_outputs() -> None:
    result = attack(make_cfg(steps=3))
    with torch.no_grad():
        expected = (ColourPrior()(result.all_latents) * 255).round().to(torch.uint8)
    assert torch.equal(result.all_images, expected)


def test_steps_zero_returns_the_initial_latents() -> None:
    cfg = make_cfg(steps=0)
    result = attack(cfg)
    assert torch.equal(result.all_latents[: cfg.candidates], brute_force_top(cfg, 0))
    assert result.final_latents.shape == (9, 4)


def test_runs_inside_no_grad() -> None:
    cfg = make_cfg()
    with torch.no_grad():
        inside = attack(cfg)
    assert torch.equal(inside.all_latents, attack(cfg).all_latents)


def test_rows_do_not_depend_on_batching_without_augmentation_noise() -> None:
    cfg = make_cfg(step_crop_scale=(1.0, 1.0), candidates=30, pool_size=64, steps=10, batch_size=7)
    batched = attack(cfg)
    single = attack(cfg.model_copy(update={"batch_size": 90}))
    per_class = attack(cfg, schedule="per_class")
    # Adam with betas (0.1, 0.1) turns float rounding of the batched convolutions into ~1e-4 drifts.
    assert torch.allclose(batched.all_latents, single.all_latents, atol=1e-3)
    assert torch.allclose(batched.all_latents, per_class.all_latents, atol=1e-3)


def test_batched_and_per_class_reach_similar_confidence() -> None:
    cfg = make_cfg(candidates=30, pool_size=64, steps=15, batch_size=32)
    batched, per_class = attack(cfg), attack(cfg, schedule="per_class")
    assert batched.all_latents.shape == per_class.all_latents.shape
    assert batched.final_images.shape == per_class.final_images.shape
    assert torch.equal(batched.final_targets, per_class.final_targets)
    target = MeanColourClassifier()
    conf_b = confidence(target, batched.all_images, batched.all_targets).mean()
    conf_p = confidence(target, per_class.all_images, per_class.all_targets).mean()
    assert abs(conf_b - conf_p) < 0.03  # seeds 0-2 differ by at most 0.009


@pytest.mark.parametrize("schedule", ["batched", "per_class"])
def test_diagnostics_record_every_step_and_leave_the_latents_unchanged(schedule: Schedule) -> None:
    # 30 rows: batches of 8, or 10 per class; full-size step crops, so step 0 sees the start images unchanged
    cfg = make_cfg(steps=7, candidates=10, pool_size=32, step_crop_scale=(1.0, 1.0))
    result = attack(cfg, schedule=schedule)
    plain = run_attack(
        cfg, MeanColourClassifier(), ColourPrior(), [0, 3, 4], CPU, progress=False, schedule=schedule, diagnostics=False
    )
    for name in ("all_latents", "all_images", "final_latents", "final_scores"):
        assert torch.equal(getattr(result, name), getattr(plain, name)), name
    assert "diagnostics" not in plain.meta and "final_target_confidence_raw" not in plain.meta
    curves = result.meta["diagnostics"]
    assert len(curves["loss"]) == len(curves["target_confidence"]) == 7 and len(curves["grad_cosine"]) == 6
    assert all(isinstance(v, float) and round(v, 6) == v for curve in curves.values() for v in curve)
    assert all(-1.0 <= c <= 1.0 for c in curves["grad_cosine"])
    assert curves["target_confidence"][-1] > curves["target_confidence"][0] + 0.1
    assert curves["loss"][-1] < curves["loss"][0]
    # step 0 scores the start latents: their plain confidence and loss
    start = attack(cfg.model_copy(update={"steps": 0}), schedule=schedule)
    with torch.no_grad():
        logits = MeanColourClassifier()(ColourPrior()(start.all_latents))
    expected = torch.softmax(logits, 1).gather(1, start.all_targets.view(-1, 1)).mean()
    assert curves["target_confidence"][0] == pytest.approx(expected.item(), abs=1e-5)
    assert curves["loss"][0] == pytest.approx(poincare_loss(logits, start.all_targets).item(), abs=1e-4)
    raw = confidence(MeanColourClassifier(), result.final_images, result.final_targets).mean()
    assert result.meta["final_target_confidence_raw"] == pytest.approx(raw.item(), abs=1e-6)


def test_diagnostics_are_the_same_for_any_number_of_ranks() -> None:
    cfg = make_cfg(steps=4, batch_size=4)
    prior, target = ColourPrior(), MeanColourClassifier()
    start = torch.randn(18, prior.latent_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 4]).repeat_interleave(6)
    batches = row_batches(3, 6, cfg.batch_size, "batched")

    def recorded(rank: int, world: int) -> StepDiagnostics:
        recorder = StepDiagnostics(batches, cfg.steps)
        optimise(
            prior, target, start, labels, batches, cfg, stage_generators(cfg.seed)[1], CPU, False, rank, world, recorder
        )
        return recorder

    alone = recorded(0, 1)
    ranks = [recorded(rank, 2) for rank in range(2)]
    for recorder in ranks:  # what merge_ranks does with the all-gathered tables
        recorder.take_owned([r.sums for r in ranks])
        assert torch.equal(recorder.sums, alone.sums) and recorder.curves() == alone.curves()


def test_unknown_schedule_is_a_user_error() -> None:
    with pytest.raises(LsmiaError, match="schedule"):
        attack(make_cfg(), schedule="sideways")  # type: ignore[arg-type]  # a wrong value on purpose


def test_resolve_targets() -> None:
    assert resolve_targets(3, 10) == [0, 1, 2]
    assert resolve_targets([7, 1], 10) == [7, 1]
    assert resolve_targets(10, 10) == list(range(10))


@pytest.mark.parametrize(
    "spec, problem",
    [
        (11, "11 classes but the target model has 10"),
        (0, "0 classes"),
        ([3, 10], "class 10 outside 0..9"),
        ([-1], "class -1 outside"),
        ([2, 5, 2], "class 2 more than once"),
        ([], "empty list"),
    ],
)
def test_resolve_targets_errors(spec, problem: str) -> None:
    with pytest.raises(LsmiaError, match=problem) as err:
        resolve_targets(spec, 10)
    assert "\n" not in str(err.value) and ":" in str(err.value)


def test_progress_reports_the_steps(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg(steps=4, candidates=4, final_samples=2)  # 3 targets x 4 rows = 2 batches of 8 -> 8 steps
    run_attack(cfg, MeanColourClassifier(), ColourPrior(), [0, 1, 2], CPU, progress=True)
    assert "attack steps: 8/8" in capsys.readouterr().err


# --- the latent space: z or w, truncation, relative lr ---


class ScaledColourPrior(ColourPrior):
    """ColourPrior with latents ``scale`` times larger: the same images from ``scale * z``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z / self.scale)

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return super().sample_latents(n, generator) * self.scale


def mapping_prior(image_size: int = 8) -> DCGANPrior:
    torch.manual_seed(0)
    prior = DCGANPrior(Generator(4, image_size, 8, mapping_layers=2, w_dim=6))
    with torch.no_grad():
        prior.generator.w_avg.copy_(prior.generator.to_w(torch.randn(1000, 4)).mean(0))
    return prior


def test_latent_w_optimises_w_from_the_truncated_pool() -> None:
    cfg = make_cfg(latent="w", truncation=0.5, steps=5)
    prior = mapping_prior()
    start = run_attack(
        cfg.model_copy(update={"steps": 0}), MeanColourClassifier(), prior, [0, 3, 4], CPU, progress=False
    )
    result = run_attack(cfg, MeanColourClassifier(), prior, [0, 3, 4], CPU, progress=False)
    assert result.all_latents.shape == (18, 6) and result.final_latents.shape == (9, 6)  # w_dim columns
    assert not torch.allclose(result.all_latents, start.all_latents)
    pool = prior.sample_latents(cfg.pool_size, stage_generators(cfg.seed)[0])
    z = torch.randn(cfg.pool_size, 4, generator=stage_generators(cfg.seed)[0])
    torch.testing.assert_close(pool, prior.generator.w_avg.lerp(prior.generator.to_w(z), 0.5))
    assert all(any(torch.equal(row, p) for p in pool) for row in start.all_latents)  # start rows come from it
    with torch.no_grad():
        expected = (prior(result.final_latents) * 255).round().to(torch.uint8)
    assert torch.equal(result.final_images, expected)
    assert result.meta["latent"] == "w" and result.meta["latent_dim"] == 6 and result.meta["truncation"] == 0.5


def test_meta_records_space_truncation_and_effective_lr() -> None:
    result = attack(make_cfg(steps=1, lr_relative=False))
    assert (result.meta["latent"], result.meta["truncation"], result.meta["lr_effective"]) == ("z", None, 0.1)
    z_space = run_attack(
        make_cfg(steps=1, truncation=0.7), MeanColourClassifier(), mapping_prior(), [0], CPU, progress=False
    )
    assert (z_space.meta["latent"], z_space.meta["latent_dim"], z_space.meta["truncation"]) == ("z", 4, 0.7)


def test_relative_lr_is_the_lr_times_the_std_of_the_initial_latents() -> None:
    cfg = make_cfg(latent="w", truncation=0.5, steps=1, lr=0.01)
    prior = mapping_prior()
    result = run_attack(cfg, MeanColourClassifier(), prior, [0, 3, 4], CPU, progress=False)
    pool = prior.sample_latents(cfg.pool_size, stage_generators(cfg.seed)[0])
    scale = pool.double().var(dim=0).mean().sqrt().item()
    assert 0.05 < scale < 0.8  # w truncated by 0.5 is narrower than z
    assert result.meta["lr_effective"] == pytest.approx(0.01 * scale, rel=1e-9)
    assert latent_scale(torch.randn(20_000, 8, generator=torch.Generator().manual_seed(0))) == pytest.approx(
        1, abs=0.01
    )


def test_relative_lr_makes_the_same_relative_move_at_any_latent_scale() -> None:
    # Latents 100x smaller (gradients 100x larger, so Adam's eps stays negligible): the same path, scaled.
    cfg = make_cfg(steps=10)
    unit = run_attack(cfg, MeanColourClassifier(), ColourPrior(), [0, 3, 4], CPU, progress=False)
    scaled = run_attack(cfg, MeanColourClassifier(), ScaledColourPrior(0.01), [0, 3, 4], CPU, progress=False)
    torch.testing.assert_close(scaled.all_latents / 0.01, unit.all_latents, atol=1e-4, rtol=1e-4)
    assert torch.equal(scaled.final_targets, unit.final_targets)
    absolute = run_attack(
        cfg.model_copy(update={"lr_relative": False}),
        MeanColourClassifier(),
        ScaledColourPrior(0.01),
        [0, 3, 4],
        CPU,
        progress=False,
    )
    assert (absolute.all_latents / 0.01 - unit.all_latents).abs().max() > 1.0  # lr 0.1 is huge at scale 0.01


@pytest.mark.parametrize(
    "prior, fix",
    [(ColourPrior(), "set attack.latent: z"), (DCGANPrior(Generator(4, 8, 8)), "set prior.mapping_layers > 0")],
)
def test_latent_w_without_a_mapping_network_is_a_one_line_error(prior: nn.Module, fix: str) -> None:
    with pytest.raises(LsmiaError, match=r"attack\.latent is 'w' but the prior has no mapping network") as err:
        run_attack(make_cfg(latent="w"), MeanColourClassifier(), prior, [0], CPU, progress=False)
    assert fix in str(err.value) and "\n" not in str(err.value)


class StandInMapping(nn.Module):
    """z [N, 4] -> w [N, num_ws, 5], one w repeated per layer, as StyleGAN2-ADA's G.mapping returns it."""

    def __init__(self, num_ws: int) -> None:
        super().__init__()
        self.fc, self.num_ws = nn.Linear(4, 5), num_ws

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(self.fc(z), 0.2).unsqueeze(1).repeat(1, self.num_ws, 1)


class StandInSynthesis(nn.Module):
    """ws [N, num_ws, 5] -> images [N, 3, 16, 16] in [-1, 1]: mean colour from the first w, a ramp from the last."""

    def __init__(self) -> None:
        super().__init__()
        self.colour, self.ramp = nn.Linear(5, 3), nn.Linear(5, 1)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        colour = torch.tanh(self.colour(ws[:, 0])).view(-1, 3, 1, 1)
        x = torch.linspace(-1.0, 1.0, 16).view(1, 1, 1, 16)
        return (colour + 0.1 * torch.tanh(self.ramp(ws[:, -1])).view(-1, 1, 1, 1) * x).expand(-1, 3, 16, 16)


class StandInStyleGAN(nn.Module):
    """A tiny randomly initialised generator in the README's export format: mapping, synthesis, w_avg."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping, self.synthesis = StandInMapping(num_ws=12), StandInSynthesis()
        self.register_buffer("w_avg", torch.zeros(5))


def test_torchscript_stylegan_stand_in_round_trip(tmp_path) -> None:
    from lsmia.config import PriorConfig

    torch.manual_seed(0)
    torch.jit.script(StandInStyleGAN()).save(str(tmp_path / "stylegan.pt"))
    prior = load_prior(
        PriorConfig(kind="torchscript", path=tmp_path / "stylegan.pt", latent_dim=4, center_crop=0.75), None
    )
    cfg = make_cfg(latent="w", truncation=0.5, steps=2, pool_size=32, candidates=4, final_samples=2)
    start = run_attack(cfg.model_copy(update={"steps": 0}), MeanColourClassifier(), prior, [0, 3], CPU, progress=False)
    result = run_attack(cfg, MeanColourClassifier(), prior, [0, 3], CPU, progress=False)
    assert (prior.num_ws, prior.w_dim, prior.image_size) == (12, 5, 12)  # 16 px, central 75 % kept
    assert result.all_latents.shape == (8, 5) and result.all_images.shape == (8, 3, 8, 8)
    assert not torch.equal(result.all_latents, start.all_latents)
    assert result.meta["latent"] == "w" and result.meta["truncation"] == 0.5
    module = torch.jit.load(str(tmp_path / "stylegan.pt"))
    with torch.no_grad():  # w repeated to all 12 layers, centre-cropped, mapped from [-1, 1] to [0, 1]
        images = module.synthesis(result.final_latents.unsqueeze(1).repeat(1, 12, 1))[..., 2:14, 2:14]
    expected = torch.nn.functional.interpolate(
        ((images + 1) / 2).clamp(0, 1), size=(8, 8), mode="bilinear", antialias=True, align_corners=False
    )
    assert (result.final_images.float() - expected * 255).abs().max() <= 1.0


def test_torchscript_stylegan_w_plus_attack_moves_each_layer_s_w(tmp_path) -> None:
    from lsmia.config import PriorConfig

    torch.manual_seed(0)
    torch.jit.script(StandInStyleGAN()).save(str(tmp_path / "stylegan.pt"))
    prior = load_prior(PriorConfig(kind="torchscript", path=tmp_path / "stylegan.pt", latent_dim=4), None)
    cfg = make_cfg(latent="w+", truncation=0.5, steps=2, pool_size=32, candidates=4, final_samples=2)
    start = run_attack(cfg.model_copy(update={"steps": 0}), MeanColourClassifier(), prior, [0, 3], CPU, progress=False)
    result = run_attack(cfg, MeanColourClassifier(), prior, [0, 3], CPU, progress=False)
    assert result.meta["latent"] == "w+" and result.meta["latent_dim"] == 12 * 5
    moved = (result.all_latents - start.all_latents).view(8, 12, 5)
    # the synthesis reads only the first and the last layer's w: only those move, and independently
    assert moved[:, 1:11].abs().max() == 0
    assert moved[:, 0].abs().max() > 0 and moved[:, -1].abs().max() > 0
    assert not torch.allclose(moved[:, 0], moved[:, -1])
    module = torch.jit.load(str(tmp_path / "stylegan.pt"))
    with torch.no_grad():
        images = (module.synthesis(result.final_latents.view(-1, 12, 5)) + 1) / 2
    expected = torch.nn.functional.interpolate(
        images.clamp(0, 1), size=(8, 8), mode="bilinear", antialias=True, align_corners=False
    )
    assert (result.final_images.float() - expected * 255).abs().max() <= 1.0


# --------------------------------------------------------------------------- attack.clip and attack.render_size


class _Mapping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z).unsqueeze(1).repeat(1, 2, 1)


class _Synthesis(nn.Module):
    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        colour = 3.0 * torch.tanh(ws[:, 0, :3])  # like StyleGAN's, the output leaves [-1, 1]
        return colour.view(-1, 3, 1, 1).expand(-1, 3, 8, 8)


class OvershootingGAN(nn.Module):
    """A TorchScript StyleGAN in the README's format whose images reach far outside [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping, self.synthesis = _Mapping(), _Synthesis()
        self.register_buffer("w_avg", torch.zeros(4))


def overshooting_prior(tmp_path) -> TorchScriptPrior:
    torch.manual_seed(0)
    path = tmp_path / "gan.pt"
    torch.jit.script(OvershootingGAN()).save(str(path))
    return TorchScriptPrior(path, 4, (-1.0, 1.0))


def test_prior_clip_false_leaves_values_outside_0_1(tmp_path) -> None:
    prior = overshooting_prior(tmp_path)
    prior.configure_latent("w", None)
    w = prior.sample_latents(16, torch.Generator().manual_seed(0))
    clipped = prior(w)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0 and prior.clip
    prior.clip = False
    raw = prior(w)
    assert raw.min() < -0.2 and raw.max() > 1.2  # (3 tanh(.) + 1) / 2 reaches far past both ends
    assert torch.equal(raw.clamp(0, 1), clipped)


@pytest.mark.parametrize("clip", [True, False])
def test_attack_clip_false_optimises_on_unclipped_images_and_selection_clips(tmp_path, clip: bool) -> None:
    prior = overshooting_prior(tmp_path)
    seen: list[tuple[bool, bool]] = []  # per render: (clip switch, images outside [0, 1])

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append((bool(module.clip), bool((out < 0).any() or (out > 1).any())))

    prior.register_forward_hook(record)
    cfg = make_cfg(latent="w", truncation=1.0, lr_relative=False, steps=3, clip=clip)
    run_attack(cfg, MeanColourClassifier(), prior, [0, 3, 4], CPU, progress=False, diagnostics=False)
    pool_renders = cfg.pool_size // cfg.selection_batch_size
    assert all(switch and not outside for switch, outside in seen[:pool_renders])  # the initial selection clips
    if clip:
        assert all(switch and not outside for switch, outside in seen)
    else:  # every optimisation step and the final selection see the generator's own values; the last two
        # renders are the saved uint8 images (18 rows in chunks of 16), which clamp whatever the switch
        assert any(outside for _, outside in seen[pool_renders:])
        assert [switch for switch, _ in seen[pool_renders:-2]] == [False] * (len(seen) - pool_renders - 2)
        assert [switch for switch, _ in seen[-2:]] == [True, True]
    assert prior.clip  # the caller's prior is handed back as it came


def test_render_size_saves_the_images_at_the_evaluations_size() -> None:
    cfg = make_cfg(steps=3)
    plain = attack(cfg)
    rendered = attack(cfg.model_copy(update={"render_size": 16}))
    assert torch.equal(plain.all_latents, rendered.all_latents)  # what is optimised and kept does not change
    assert torch.equal(plain.final_latents, rendered.final_latents)
    assert rendered.all_images.shape[-1] == rendered.final_images.shape[-1] == 16
    with torch.no_grad():
        expected = (resize(ColourPrior()(rendered.all_latents), 16) * 255).round().to(torch.uint8)
    assert torch.equal(rendered.all_images, expected)
    # the raw-confidence diagnostic scores the saved images at the target's input size
    assert rendered.meta["final_target_confidence_raw"] == pytest.approx(
        plain.meta["final_target_confidence_raw"], abs=0.02
    )
