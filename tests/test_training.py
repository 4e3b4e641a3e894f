import pytest
import torch

from lsmia.config import ClassifierConfig, SmoothingConfig
from lsmia.errors import DivergenceError, LsmiaError
from lsmia.models.classifiers import build_classifier, load_classifier
from lsmia.training.classifier import calibration_metrics, train_classifier
from lsmia.training.schedules import alpha_trajectory

CPU = torch.device("cpu")


def tiny_cfg(**kw) -> ClassifierConfig:
    return ClassifierConfig(arch="smallresnet", width=8, epochs=kw.pop("epochs", 4), batch_size=8, **kw)


def test_training_learns_and_writes_model_and_metrics(tiny_data, tmp_path):
    result = train_classifier(tiny_cfg(epochs=6), tiny_data, tmp_path, CPU, seed=0, show_progress=False)
    assert result.metrics["test_acc"] >= 0.75  # 4 separable colour classes
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert (tmp_path / "model.pt").exists() and (tmp_path / "metrics.json").exists()
    for key in ("ece", "mean_confidence", "mean_logit_norm", "train_acc"):
        assert key in result.metrics
    model = load_classifier(tmp_path / "model.pt", num_classes=4)
    assert torch.equal(model(tiny_data.test.float_images()), result.model(tiny_data.test.float_images()))


def test_the_alpha_schedule_is_applied_in_training(tiny_data, tmp_path):
    smoothing = SmoothingConfig(alpha=-0.05, schedule="linear", warmup_start=0.25, warmup_end=0.75)
    seen = []
    result = train_classifier(
        tiny_cfg(),
        tiny_data,
        tmp_path,
        CPU,
        smoothing=smoothing,
        show_progress=False,
        on_epoch=lambda e, row: seen.append(row["alpha"]),
    )
    assert seen == [row["alpha"] for row in result.history] == alpha_trajectory(smoothing, 4)
    assert seen[0] == 0.0 and seen[-1] == -0.05


def test_resume_after_interruption_gives_identical_weights(tiny_data, tmp_path):
    cfg = tiny_cfg(epochs=3)
    full = train_classifier(cfg, tiny_data, tmp_path / "full", CPU, seed=3, show_progress=False)
    train_classifier(cfg, tiny_data, tmp_path / "cut", CPU, seed=3, show_progress=False, stop_after_epoch=0)
    resumed = train_classifier(cfg, tiny_data, tmp_path / "cut", CPU, seed=3, show_progress=False)
    assert resumed.resumed_from_epoch == 1
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    assert resumed.history == full.history


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_cfg(epochs=3)
    train_classifier(cfg, tiny_data, tmp_path, CPU, show_progress=False, stop_after_epoch=0)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    import lsmia.training.classifier as tc

    monkeypatch.setattr(tc, "smoothed_cross_entropy", lambda logits, y, a: logits.sum() * float("nan"))
    with pytest.raises(DivergenceError, match="diverged"):
        train_classifier(cfg, tiny_data, tmp_path, CPU, show_progress=False)
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == good["epoch"] == 0
    assert not (tmp_path / "model.pt").exists()


def test_checkpoint_mismatch_is_a_one_line_error(tiny_data, tmp_path):
    train_classifier(tiny_cfg(epochs=1), tiny_data, tmp_path, CPU, show_progress=False)
    with pytest.raises(LsmiaError, match="classes"):
        load_classifier(tmp_path / "model.pt", num_classes=7)
    with pytest.raises(LsmiaError, match="smallvgg"):
        load_classifier(tmp_path / "model.pt", arch="smallvgg")
    with pytest.raises(LsmiaError, match="unknown architecture"):
        build_classifier("resnet9000", 3, 16)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LsmiaError, match="cannot be read"):
        load_classifier(tmp_path / "junk.pt")


def test_calibration_metrics_on_known_logits():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    m = calibration_metrics(logits, labels)
    assert m["accuracy"] == 0.75
    conf = torch.softmax(torch.tensor([10.0, 0.0]), 0)[0].item()
    assert m["mean_confidence"] == pytest.approx((3 * conf + 0.5) / 4)
    # bin of ~1.0 confidence: 3 samples, 2 right; bin of 0.5: 1 sample, 1 right (argmax of a tie is class 0)
    assert m["ece"] == pytest.approx(0.75 * abs(conf - 2 / 3) + 0.25 * abs(0.5 - 1.0), abs=1e-6)
    assert m["mean_logit_norm"] == pytest.approx(30 / 4)


@pytest.mark.parametrize("arch", ["smallvgg", "resnet18"])
def test_other_architectures_train_one_epoch(tiny_data, tmp_path, arch):
    cfg = ClassifierConfig(arch=arch, width=8, epochs=1, batch_size=8)
    result = train_classifier(cfg, tiny_data, tmp_path, CPU, show_progress=False)
    assert 0.0 <= result.metrics["test_acc"] <= 1.0
