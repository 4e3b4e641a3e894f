"""Metrics that train or run networks: ξ, attribute leakage, the full evaluation, Inception FID."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from lsmia.attack.result import AttackResult
from lsmia.config import MetricsConfig, StudentConfig
from lsmia.data.base import FaceData, ImageSet
from lsmia.errors import LsmiaError
from lsmia.metrics import (
    attack_accuracy,
    attribute_leakage,
    evaluate_attack,
    inception_fid,
    knowledge_extraction,
    load_attribute_predictor,
    predict_logits,
    save_attribute_predictor,
    train_attribute_predictor,
)
from lsmia.metrics.evaluate import attack_diagnostics
from lsmia.models.classifiers import build_classifier

SIZE = 16
COLOURS = 3  # attribute "colour": which channel is bright
ORIENTATIONS = 2  # attribute "stripes": horizontal or vertical


def render(colour: int, stripes: int, period: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n noisy uint8 images of one identity: a dominant colour with dark stripes of a given period."""
    base = torch.full((3,), 0.25)
    base[colour] = 0.85
    band = (torch.arange(SIZE) // period) % 2 == 0
    mask = band.view(SIZE, 1) if stripes == 0 else band.view(1, SIZE)
    image = base.view(3, 1, 1) * torch.where(mask, 0.45, 1.0).expand(SIZE, SIZE)
    noisy = image + 0.06 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)


def identity_set(combos: list[tuple[int, int, int]], per_identity: int, gen: torch.Generator) -> ImageSet:
    images = torch.cat([render(c, s, p, per_identity, gen) for c, s, p in combos])
    return ImageSet(images, torch.arange(len(combos)).repeat_interleave(per_identity))


def attribute_table(combos: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    return {"colour": torch.tensor([c for c, _, _ in combos]), "stripes": torch.tensor([s for _, s, _ in combos])}


@pytest.fixture(scope="module")
def face_data() -> FaceData:
    """6 private identities (every colour x stripes combination, period 4) and 12 public ones (periods 2, 8)."""
    gen = torch.Generator().manual_seed(0)
    private = [(c, s, 4) for c in range(COLOURS) for s in range(ORIENTATIONS)]
    public = [(c, s, p) for p in (2, 8) for c in range(COLOURS) for s in range(ORIENTATIONS)]
    train, test = identity_set(private, 10, gen), identity_set(private, 4, gen)
    return FaceData(
        train=train,
        test=test,
        class_names=[f"id{i}" for i in range(len(private))],
        public=identity_set(public, 10, gen),
        attributes=attribute_table(private),
        public_attributes=attribute_table(public),
        attribute_cardinality={"colour": COLOURS, "stripes": ORIENTATIONS},
    )


@pytest.fixture(scope="module")
def predictor(face_data: FaceData):
    torch.set_num_threads(1)
    return train_attribute_predictor(face_data, "cpu", epochs=8, seed=0, width=8, batch_size=16)


def noise_like(images: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


STUDENT = StudentConfig(arch="smallresnet", width=8, epochs=8, batch_size=16, lr=0.05)


def real_of(data: FaceData) -> ImageSet:
    return ImageSet(torch.cat([data.train.images, data.test.images]), torch.cat([data.train.labels, data.test.labels]))


def test_xi_is_high_for_real_samples_and_near_chance_for_noise(face_data: FaceData) -> None:
    torch.set_num_threads(1)
    real = real_of(face_data)
    xi_real = knowledge_extraction(STUDENT, face_data.train.images, face_data.train.labels, real, "cpu", seed=0)
    xi_noise = knowledge_extraction(
        STUDENT, noise_like(face_data.train.images, 1), face_data.train.labels, real, "cpu", seed=0
    )
    assert xi_real >= 0.9
    assert xi_noise <= 0.45  # chance is 1/6
    assert xi_real > xi_noise + 0.4


def test_xi_restricts_labels_to_the_targeted_classes(face_data: FaceData) -> None:
    torch.set_num_threads(1)
    targets = [1, 4]
    samples = face_data.train.of_classes(targets)
    real = real_of(face_data).of_classes(targets)
    cfg = STUDENT.model_copy(update={"epochs": 4})
    assert knowledge_extraction(cfg, samples.images, samples.labels, real, "cpu", seed=0) == 1.0
    with pytest.raises(LsmiaError, match="not among the targeted classes"):
        knowledge_extraction(cfg, samples.images, samples.labels, real_of(face_data), "cpu", seed=0)


def test_attribute_leakage_of_real_images_beats_chance_and_noise_does_not(face_data: FaceData, predictor) -> None:
    samples = face_data.train
    leaked = attribute_leakage(face_data, samples.images, samples.labels, "cpu", epochs=1, predictor=predictor)
    noise = attribute_leakage(
        face_data, noise_like(samples.images, 2), samples.labels, "cpu", epochs=1, predictor=predictor
    )
    assert leaked["attribute_chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert leaked["attribute_acc"] == 1.0
    assert leaked["attribute_acc_colour"] == 1.0 and leaked["attribute_acc_stripes"] == 1.0
    assert leaked["attribute_acc_real"] == 1.0
    # noise gets (nearly) the same prediction for every identity: at most the majority share
    assert noise["attribute_acc"] <= leaked["attribute_chance"] + 0.1
    assert noise["attribute_acc_real"] == 1.0


def test_attribute_leakage_scores_only_the_targets(face_data: FaceData, predictor) -> None:
    picked = face_data.train.of_classes([0, 3])  # (red, horizontal), (green, vertical)
    got = attribute_leakage(face_data, picked.images, picked.labels, "cpu", epochs=1, predictor=predictor)
    assert got["attribute_acc"] == 1.0
    # majority guess over all private identities: colour 0 and stripes 0 (ties go to the lowest value)
    assert got["attribute_chance"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_attribute_leakage_is_empty_without_attributes(face_data: FaceData) -> None:
    plain = FaceData(train=face_data.train, test=face_data.test, class_names=face_data.class_names)
    assert attribute_leakage(plain, plain.train.images, plain.train.labels, "cpu", epochs=1) == {}
    with pytest.raises(LsmiaError, match="builtin"):
        train_attribute_predictor(plain, "cpu", epochs=1)


def test_attribute_predictor_round_trips_through_a_file(predictor, face_data: FaceData, tmp_path: Path) -> None:
    save_attribute_predictor(predictor, tmp_path / "attr.pt")
    loaded = load_attribute_predictor(tmp_path / "attr.pt")
    images = face_data.test.images
    assert torch.allclose(predict_logits(loaded, images), predict_logits(predictor, images), atol=1e-6)


def fake_attack(data: FaceData, targets: list[int], per_target: int, seed: int) -> AttackResult:
    """An 'attack' whose samples are noisy copies of training images of the targets."""
    gen = torch.Generator().manual_seed(seed)
    picked = [data.train.images[data.train.labels == t][:per_target] for t in targets]
    images = torch.cat(picked)
    noisy = (images.float() + 20 * torch.randn(images.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    labels = torch.tensor(targets).repeat_interleave(per_target)
    half = per_target // 2
    final = torch.cat([torch.arange(i * per_target, i * per_target + half) for i in range(len(targets))])
    return AttackResult(
        targets=targets,
        all_latents=torch.zeros(len(images), 4),
        all_images=noisy,
        all_targets=labels,
        final_latents=torch.zeros(len(final), 4),
        final_images=noisy[final],
        final_targets=labels[final],
        final_scores=torch.linspace(0.2, 0.8, len(final)),
    )


def test_evaluate_attack_reports_every_metric(face_data: FaceData, predictor) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    eval_model = build_classifier("smallresnet", face_data.num_classes, SIZE, width=4).eval()
    result = fake_attack(face_data, targets=[0, 2, 5], per_target=8, seed=0)
    cfg = MetricsConfig(prdc_k=2, student=STUDENT.model_copy(update={"epochs": 2}))
    metrics = evaluate_attack(cfg, result, eval_model, face_data, "cpu", seed=0, attribute_predictor=predictor)
    expected_keys = {
        "final_acc1",
        "final_acc5",
        "all_acc1",
        "all_acc5",
        "delta_eval",
        "fid_eval_features",
        "precision",
        "recall",
        "density",
        "coverage",
        "xi",
        "attribute_acc",
        "attribute_acc_colour",
        "attribute_acc_stripes",
        "attribute_chance",
        "attribute_acc_real",
        "num_targets",
        "num_final_samples",
        "final_target_confidence",
    }
    # no inception_fid, fid_tf_inception or delta_face without metrics.inception_path, fid_inception_path, facenet_path
    assert set(metrics) == expected_keys
    direct = attack_accuracy(eval_model, result.final_images, result.final_targets)
    assert (metrics["final_acc1"], metrics["final_acc5"]) == (direct["acc1"], direct["acc5"])
    assert metrics["num_targets"] == 3.0 and metrics["num_final_samples"] == 12.0
    assert metrics["final_target_confidence"] == pytest.approx(0.5)  # mean of linspace(0.2, 0.8)
    assert metrics["delta_eval"] > 0 and metrics["fid_eval_features"] > 0
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("precision", "recall", "coverage", "xi", "attribute_acc"))
    assert metrics["attribute_acc"] == 1.0


def test_evaluate_attack_summarises_the_attack_diagnostics(face_data: FaceData, predictor) -> None:
    torch.set_num_threads(1)
    result = fake_attack(face_data, targets=[0, 2], per_target=4, seed=0)
    result.meta.update(
        final_target_confidence_raw=0.625,
        diagnostics={"loss": [3.0, 2.0, 1.0], "target_confidence": [0.1, 0.3, 0.6], "grad_cosine": [0.25, 0.75]},
    )
    model = build_classifier("smallresnet", face_data.num_classes, SIZE, width=4)
    cfg = MetricsConfig(prdc_k=1, student=STUDENT.model_copy(update={"epochs": 1}))
    metrics = evaluate_attack(cfg, result, model, face_data, "cpu", attribute_predictor=predictor)
    assert metrics["grad_cosine_mean"] == 0.5  # mean over steps
    assert metrics["final_target_confidence_raw"] == 0.625  # as the attack measured it, no transforms
    assert metrics["final_target_confidence"] == pytest.approx(result.final_scores.mean().item())  # under crops
    del result.meta["diagnostics"], result.meta["final_target_confidence_raw"]  # an attack saved before them
    assert attack_diagnostics(result) == {}


def test_evaluate_attack_leaves_out_prdc_with_one_sample_per_target(face_data: FaceData, predictor) -> None:
    torch.set_num_threads(1)
    result = fake_attack(face_data, targets=[1, 3], per_target=2, seed=0)  # one final sample each
    model = build_classifier("smallresnet", face_data.num_classes, SIZE, width=4)
    cfg = MetricsConfig(student=STUDENT.model_copy(update={"epochs": 1}))
    with pytest.warns(UserWarning, match="PRDC left out"):
        metrics = evaluate_attack(cfg, result, model, face_data, "cpu", attribute_predictor=predictor)
    assert "precision" not in metrics and metrics["num_final_samples"] == 2.0 and "xi" in metrics


def test_evaluate_attack_rejects_targets_outside_the_data(face_data: FaceData) -> None:
    result = fake_attack(face_data, targets=[0, 1], per_target=4, seed=0)
    result.targets = [0, 9]
    model = build_classifier("smallresnet", face_data.num_classes, SIZE, width=4)
    with pytest.raises(LsmiaError, match="do not exist"):
        evaluate_attack(MetricsConfig(), result, model, face_data, "cpu")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / "inception_v3.pt"
    torch.save(net.state_dict(), path)
    return path


def test_inception_fid_runs_on_local_weights(inception_weights: Path, face_data: FaceData) -> None:
    torch.set_num_threads(1)
    real = face_data.train.images[:4]
    assert inception_fid(real, real.clone(), inception_weights) == pytest.approx(0.0, abs=1e-3)
    assert inception_fid(noise_like(real, 3), real, inception_weights) > 0.0


def test_inception_fid_rejects_foreign_weights(tmp_path: Path, face_data: FaceData) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(LsmiaError, match="inception_v3"):
        inception_fid(face_data.train.images[:2], face_data.train.images[2:4], tmp_path / "bad.pt")


def test_logit_geometry_by_hand() -> None:
    from lsmia.metrics.logits import logit_geometry

    logits = torch.tensor([[3.0, 1.0, -1.0], [0.0, 2.0, -2.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1, 2])  # the third image is misclassified: its margin is negative
    # per image: f_y 3, 2, 0; others (1, -1), (0, -2), (0, 2): means 0, -1, 1, spreads 1, 1, 1; margins 2, 2, -2
    got = logit_geometry(logits, labels)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["target_logit"] == pytest.approx(5 / 3)
    assert got["other_logit_mean"] == pytest.approx(0.0)
    assert got["other_logit_spread"] == pytest.approx(1.0)
    assert got["margin"] == pytest.approx(2 / 3)
    assert got["relative_margin"] == pytest.approx(2 / 3)
    assert got["target_l1_share"] == pytest.approx((3 / 5 + 2 / 4 + 0 / 2) / 3)
    assert got["logit_norm"] == pytest.approx((11**0.5 + 8**0.5 + 4**0.5) / 3)
