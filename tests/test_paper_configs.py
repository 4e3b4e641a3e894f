"""The paper's FaceScrub and CelebA configurations: held to PPA's settings (repository commit 3087a4f, file and line),
every deliberate difference listed with its reason, and run on CPU against tiny fixtures in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from PIL import Image
from pytorch_fid.inception import InceptionV3
from typer.testing import CliRunner

from lsmia.cli import app
from lsmia.config import ClassifierConfig, Config, build_config, load_config
from lsmia.data.base import FaceData, ImageSet
from lsmia.data.real import HD_CROP_FOLDER, RESIZE_POLICY
from lsmia.errors import LsmiaError
from lsmia.metrics.fid import FID_BLOCK
from lsmia.metrics.training import CROP_SCALE
from lsmia.models.classifiers import (
    Classifier,
    build_classifier,
    load_classifier,
    require_pretrained_weights,
    save_classifier,
)
from lsmia.models.facenet import InceptionResnetV1
from lsmia.models.generator import TRUNCATION_CUTOFF
from lsmia.stages.train import stage_train
from lsmia.training.classifier import make_scheduler, train_classifier
from lsmia.training.schedules import alpha_trajectory
from tests.helpers.paths import ROOT

runner = CliRunner()


class TinyMapping(nn.Module):
    """z [N, 512] -> w [N, 4, 512], one w repeated per layer, as StyleGAN2-ADA's G.mapping returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 512)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(self.fc(z), 0.2).unsqueeze(1).repeat(1, 4, 1)


class TinySynthesis(nn.Module):
    """ws [N, 4, 512] -> images [N, 3, 64, 64] in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 3 * 8 * 8)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.fc(ws[:, 0])).view(-1, 3, 8, 8)
        return nn.functional.interpolate(x, size=(64, 64), mode="nearest")


class TinyStyleGAN(nn.Module):
    """Stands in for an exported StyleGAN2 in the README's format (mapping, synthesis, w_avg): the paper
    configs attack its w with truncation, as PPA does."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping, self.synthesis = TinyMapping(), TinySynthesis()
        self.register_buffer("w_avg", torch.zeros(512))


def write_facescrub(root: Path, identities: int = 3, per_identity: int = 4) -> None:
    for i in range(identities):
        group = "actors" if i % 2 == 0 else "actresses"
        folder = root / group / "faces" / f"Person_{i}"
        folder.mkdir(parents=True)
        for j in range(per_identity):
            Image.new("RGB", (40, 48), (60 * i + 5 * j, 100, 200 - 50 * i)).save(folder / f"{j}.jpg")


def write_celeba(root: Path, identities: int = 4, per_identity: int = 4) -> None:
    """identity_CelebA.txt and HD-CelebA-Cropper's output at PPA's settings (square crops, the paper's layout)."""
    crops = root / HD_CROP_FOLDER.format("jpg") / "data"
    crops.mkdir(parents=True)
    lines = []
    for n in range(identities * per_identity):
        name = f"{n + 1:06d}.jpg"
        Image.new("RGB", (56, 56), (40 * (n % identities), 90, 30)).save(crops / name)
        lines.append(f"{name} {n % identities + 100}")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")


def write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A stand-in for torchvision's ImageNet file: a state dict in its key names (a few tensors, not 230 MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return path


# --------------------------------------------------------------------------- the paper configs against PPA

DATASETS = ("facescrub", "celeba")
TARGET_FILE = {
    "facescrub": "configs/training/targets/ResNet152_FaceScrub.yaml",
    "celeba": "configs/training/targets/ResNet152_CelebA.yaml",
}
EVAL_FILE = {
    "facescrub": "configs/training/evaluation/Inception_V3_FaceScrub.yaml",
    "celeba": "configs/training/evaluation/Inception_v3_CelebA.yaml",
}
ATTACK_FILE = {"facescrub": "configs/attacking/FaceScrub_FFHQ.yaml", "celeba": "configs/attacking/CelebA_FFHQ.yaml"}
SPLIT_FILE = {"facescrub": "datasets/facescrub.py", "celeba": "datasets/celeba.py"}
# line numbers of the training configs, which differ by a blank line or a duplicated key between the data sets
TARGET_LINE = {
    "facescrub": dict(seed=2, arch=5, pre=7, size=12, scale=17, jitter="21-24", flip="25-26", adam=29, lr=30, betas=31,
                      wd=32, milestones=36, gamma=37, epochs=40, batch=41),
    "celeba": dict(seed=2, arch=5, pre=7, size=12, scale=16, jitter="20-23", flip="24-25", adam=28, lr=29, betas=30,
                   wd=31, milestones=35, gamma=36, epochs=39, batch=40),
}  # fmt: skip
EVAL_LINE = {
    "facescrub": dict(arch=5, pre=7, size=12, scale=17, jitter="21-24", flip="25-26", adam=29, lr=30, betas=31, wd=32,
                      milestones=36, gamma=37, epochs=40, batch=41),
    "celeba": dict(arch=5, pre=7, size=12, scale=18, jitter="22-25", flip="26-27", adam=30, lr=31, betas=32, wd=33,
                   milestones=37, gamma=38, epochs=41, batch=42),
}  # fmt: skip
IDENTITIES = {"facescrub": 530, "celeba": 1000}


def ppa_table(name: str) -> list[tuple[str, Any, str]]:
    """PPA's settings (commit 3087a4f) as rows (lsmia setting, PPA's value, PPA's file:line). A key starting with
    '~' is derived from the resolved config or lsmia's code (see ``lsmia_value``)."""
    t, tl = TARGET_FILE[name], TARGET_LINE[name]
    e, el = EVAL_FILE[name], EVAL_LINE[name]
    a, split = ATTACK_FILE[name], SPLIT_FILE[name]
    rows: list[tuple[str, Any, str]] = [
        # data
        ("data.image_size", 224, f"{t}:{tl['size']}"),
        ("data.split", "ppa", f"{split}:" + ("71-76" if name == "facescrub" else "37-42")),
        ("data.test_fraction", 0.1, f"{split}:" + ("74" if name == "facescrub" else "40") + " (int(0.9 * N) train)"),
        ("data.split_seed", 42, f"{split}:" + ("12, 72" if name == "facescrub" else "17, 38")),
        ("~data.decode", "Resize(224), aspect ratio kept", "utils/training_config_parser.py:127"),
        ("run.seed", 42, f"{t}:{tl['seed']}"),
        # target
        ("target.arch", "resnet152", f"{t}:{tl['arch']}"),
        ("target.pretrained", True, f"{t}:{tl['pre']}"),
        ("~target.imagenet_weights", "resnet152-f82ba261.pth", "models/classifier.py:59 (ResNet152_Weights.DEFAULT)"),
        ("~target.input_size", 224, f"{t}:{tl['size']}"),
        ("target.optimizer", "adam", f"{t}:{tl['adam']}"),
        ("target.lr", 0.001, f"{t}:{tl['lr']}"),
        ("target.betas", [0.9, 0.999], f"{t}:{tl['betas']}"),
        ("target.weight_decay", 0.0, f"{t}:{tl['wd']}"),
        ("~target.milestone_epochs", [75, 90], f"{t}:{tl['milestones']}"),
        ("target.gamma", 0.1, f"{t}:{tl['gamma']}"),
        ("target.epochs", 100, f"{t}:{tl['epochs']}"),
        ("target.batch_size", 128, f"{t}:{tl['batch']}"),
        ("target.augment.crop_scale", [0.85, 1], f"{t}:{tl['scale']}"),
        ("target.augment.color_jitter", [0.2, 0.2, 0.1, 0.1], f"{t}:{tl['jitter']}"),
        ("target.augment.flip", True, f"{t}:{tl['flip']}"),
        ("target.smoothing.schedule", "upstream", "train_model.py:51-58 (ls_scheduler, absolute epochs)"),
        ("target.smoothing.negative_only", True, "train_model.py:47-62 (alpha >= 0: constant, no scheduler)"),
        # evaluation model
        ("eval_model.arch", "inception_v3", f"{e}:{el['arch']}"),
        ("eval_model.pretrained", True, f"{e}:{el['pre']}"),
        ("~eval_model.imagenet_weights", "inception_v3_google-0cc3c7bd.pth", "models/classifier.py:142"),
        ("eval_model.transform_input", True, "models/classifier.py:142-145; torchvision models/inception.py:464-465"),
        ("~eval_model.input_size", 299, f"{e}:{el['size']}"),
        ("~eval_model.training_resize", "each file resized to 299", f"utils/training_config_parser.py:127 with {e}:12"),
        ("eval_model.aux_loss_weight", 1.0, "models/classifier.py:308-313 (main_loss + aux_loss)"),
        ("~eval_model.aux_head_classes", 1000, "models/classifier.py:146-148 (only fc is replaced)"),
        ("eval_model.optimizer", "adam", f"{e}:{el['adam']}"),
        ("eval_model.lr", 0.001, f"{e}:{el['lr']}"),
        ("eval_model.betas", [0.9, 0.999], f"{e}:{el['betas']}"),
        ("eval_model.weight_decay", 0.0, f"{e}:{el['wd']}"),
        ("~eval_model.milestone_epochs", [80] if name == "facescrub" else [75, 90], f"{e}:{el['milestones']}"),
        ("eval_model.gamma", 0.1, f"{e}:{el['gamma']}"),
        ("eval_model.epochs", 100, f"{e}:{el['epochs']}"),
        ("eval_model.batch_size", 128, f"{e}:{el['batch']}"),
        ("eval_model.augment.crop_scale", [0.85, 1], f"{e}:{el['scale']}"),
        ("eval_model.augment.color_jitter", [0.2, 0.2, 0.1, 0.1], f"{e}:{el['jitter']}"),
        ("eval_model.augment.flip", True, f"{e}:{el['flip']}"),
        # attack
        ("attack.seed", 42, f"{a}:5"),
        ("attack.candidates", 200, f"{a}:9"),
        ("attack.pool_size", 2000 if name == "facescrub" else 5000, f"{a}:11"),
        ("~prior.center_crop_px", 800, f"{a}:12, 27-28"),
        ("attack.truncation", 0.5, f"{a}:16"),
        ("~attack.truncation_cutoff", 8, f"{a}:17"),
        ("attack.batch_size", 25, f"{a}:20"),
        ("attack.steps", 50 if name == "facescrub" else 70, f"{a}:21"),
        ("attack.targets", IDENTITIES[name], f"{a}:22 (targets: all) and {t}:6 (num_classes)"),
        ("attack.latent", "w", f"{a}:24 (single_w: true)"),
        ("attack.clip", False, f"{a}:25"),
        ("attack.step_crop_scale", [0.9, 1.0], f"{a}:32-36"),
        ("attack.lr", 0.005, f"{a}:40"),
        ("attack.lr_relative", False, f"{a}:40 (Adam's lr on w as it is)"),
        ("attack.betas", [0.1, 0.1], f"{a}:42"),
        ("attack.loss", "poincare", "attacks/optimize.py:44-45"),
        ("attack.until_accept", None, "attacks/optimize.py:25 (num_epochs steps, no more)"),
        ("attack.temperature", 1.0, "attacks/optimize.py:43-45 (the target's logits as they are)"),
        ("attack.target_logit_scale", 1.0, "attacks/optimize.py:43"),
        ("attack.ranking", "softmax", "attacks/initial_selection.py:84-86; attacks/final_selection.py:19-21"),
        ("attack.score", "probability", "attacks/final_selection.py:19-22"),
        ("attack.final_samples", 50, f"{a}:45"),
        ("attack.final_draws", 100, f"{a}:47"),
        ("attack.final_crop_scale", [0.5, 0.9], "attacks/final_selection.py:44-47"),
        ("attack.final_crop_ratio", [0.8, 1.2], "attacks/final_selection.py:44-47"),
        ("attack.render_size", 299, "attack.py:225, 249; utils/stylegan.py:71-74"),
        ("~attack.saved_images", "float, unclipped", "utils/stylegan.py:47-75 (create_image)"),
        # metrics
        ("metrics.prdc_k", 3, "attack.py:317"),
        ("metrics.student.arch", "resnet50", "knowledge_extraction_score.py:143"),
        ("~metrics.student.pretrained", True, "knowledge_extraction_score.py:144"),
        ("metrics.student.epochs", 75, "knowledge_extraction_score.py:31"),
        ("metrics.student.batch_size", 32, "knowledge_extraction_score.py:37"),
        ("metrics.student.lr", 0.1, "knowledge_extraction_score.py:153"),
        ("metrics.student.weight_decay", 0.0001, "knowledge_extraction_score.py:154"),
        ("metrics.student.momentum", 0.9, "knowledge_extraction_score.py:155"),
        ("~metrics.student.crop_scale", [0.8, 1.0], "knowledge_extraction_score.py:84-87"),
        ("~metrics.student.sample_rendering", "800 -> 224", "knowledge_extraction_score.py:82-83"),
        # FID (pytorch-fid 0.2.1, requirements.txt:7) and δ_face (facenet-pytorch 2.5.2, requirements.txt:1)
        ("~metrics.fid_weights", "pt_inception-2015-12-05-6726825d.pth", "metrics/fid_score.py:18, 36-37 (defaults)"),
        ("~metrics.fid_dims", 2048, "attack.py:298; metrics/fid_score.py:36"),
        ("~metrics.fid_input", "[-1, 1]", "attack.py:276-280 (Normalize(0.5, 0.5)); metrics/fid_score.py:64-69"),
        ("~metrics.facenet_weights", "20180402-114759-vggface2.pt", "attack.py:366 (pretrained='vggface2')"),
        ("~metrics.facenet_size", 160, "attack.py:372; metrics/distance_metrics.py:30, 93"),
        ("~metrics.facenet_input", "2x - 1", "metrics/distance_metrics.py:32 (43 CelebA); attack images in [-1, 1]"),
    ]
    if name == "celeba":
        rows += [
            ("data.num_identities", 1000, "datasets/celeba.py:34"),
            (
                "data.celeba_layout",
                "hd_cropped",
                "README.md:126 (HD-CelebA-Cropper, face factor 0.65, 224 px, bicubic)",
            ),
            ("data.celeba_tie_break", "first_listed", "datasets/celeba.py:29-34 (stable sort of a Counter)"),
        ]
    return rows


# Every deliberate difference from PPA, with its reason; a difference not listed here fails the test below.
DIFFERENCES: dict[str, str] = {
    "run.seed": "lsmia draws every random number from its own torch generators, PPA from global NumPy/torch seeds: "
    "the same seed gives other streams, so its value carries nothing over (data.split_seed is PPA's 42 and "
    "reproduces PPA's split exactly)",
    "attack.seed": "as run.seed: other random streams, the value carries nothing over",
    "attack.batch_size": "rows are optimised independently (each row gets the update it would get alone, "
    "lsmia/attack/ppa.py); the batch only decides which crop draws a row gets, and 100 fills a GPU better than 25",
    "~data.decode": "lsmia stores square uint8 images once (shorter side to 224, centre crop); PPA keeps the aspect "
    "ratio and crops squares during augmentation. Identical for square sources such as the 224x224 HD CelebA crops; "
    "a FaceScrub crop that is not square loses its outer margin",
    "~eval_model.training_resize": "the data set is stored once at 224 px, so the evaluation model trains on those "
    "images resized to 299 per batch; PPA resizes each file to 299 (for the 224 px HD CelebA crops the same upsampling)",
    "~attack.saved_images": "attack results store uint8 images (a quarter of float32's memory at 106,000 candidates), "
    "which clamps to [0, 1] and rounds to 1/255; PPA scores float images that may leave [-1, 1]",
    "~metrics.student.pretrained": "lsmia's xi student trains from scratch (metrics.student has no ImageNet start); xi "
    "compares targets of different alpha with the same student, not PPA's absolute number",
    "~metrics.student.crop_scale": "lsmia's metric training loop uses one crop for every metric model "
    "(lsmia/metrics/training.py CROP_SCALE, PPA's classifier crop 0.85-1)",
    "~metrics.student.sample_rendering": "the final images are rendered once at the evaluation model's 299 px "
    "(attack.render_size); the student resizes them to 224 (antialiased) instead of rendering 800 -> 224 again",
    "~metrics.fid_input": "pytorch-fid's network maps [0, 1] to the [-1, 1] its weights expect; PPA passes images "
    "already in [-1, 1], which become [-3, 1]. lsmia passes [0, 1], so its FID is pytorch-fid's FID of the images as "
    "published FIDs are, not PPA's shifted one (lsmia/metrics/fid.py fid_inception_features)",
    "~metrics.facenet_input": "FaceNet's own standardisation (pixel - 127.5) / 128 (facenet-pytorch's "
    "fixed_image_standardization), which PPA's 2x - 1 approximates to 0.4 %",
}
# PPA keeps ImageNet's 1,000-way auxiliary head: equal to lsmia's head on CelebA's 1,000 identities only
FACESCRUB_DIFFERENCES: dict[str, str] = {
    "~eval_model.aux_head_classes": "PPA replaces only fc, so its auxiliary head keeps ImageNet's 1,000 outputs and "
    "the auxiliary loss is a 1,000-way cross-entropy; lsmia sizes the head to the identities (the head is dropped at "
    "inference, so the evaluation's predictions do not depend on it)",
}


def differences(name: str) -> dict[str, str]:
    return {**DIFFERENCES, **(FACESCRUB_DIFFERENCES if name == "facescrub" else {})}


def plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def milestone_epochs(cfg: ClassifierConfig) -> list[int]:
    """The epochs at which lsmia's scheduler lowers the learning rate (fractions of cfg.epochs)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    return sorted(make_scheduler(cfg, optimizer).milestones)


def lsmia_value(cfg: Config, key: str) -> Any:
    """The value lsmia runs with for a row of ``ppa_table``: a config setting, or one derived from it or the code."""
    eval_size = cfg.eval_model.image_size or cfg.data.image_size
    derived = {
        "~data.decode": lambda: RESIZE_POLICY,
        "~target.imagenet_weights": lambda: Path(cfg.target.pretrained_path or "").name,
        "~target.input_size": lambda: cfg.target.image_size or cfg.data.image_size,
        "~target.milestone_epochs": lambda: milestone_epochs(cfg.target),
        "~eval_model.imagenet_weights": lambda: Path(cfg.eval_model.pretrained_path or "").name,
        "~eval_model.input_size": lambda: eval_size,
        "~eval_model.training_resize": lambda: (
            f"each file resized to {eval_size}"
            if eval_size == cfg.data.image_size
            else f"stored {cfg.data.image_size} px images resized to {eval_size}"
        ),
        "~eval_model.aux_head_classes": lambda: cfg.attack.targets,  # the identities, all targeted
        "~eval_model.milestone_epochs": lambda: milestone_epochs(cfg.eval_model),
        "~prior.center_crop_px": lambda: round(1024 * cfg.prior.center_crop),
        "~attack.truncation_cutoff": lambda: TRUNCATION_CUTOFF,
        "~attack.saved_images": lambda: "uint8, clamped to [0, 1]",
        "~metrics.student.pretrained": lambda: "pretrained_path" in type(cfg.metrics.student).model_fields,
        "~metrics.student.crop_scale": lambda: CROP_SCALE,
        "~metrics.fid_weights": lambda: Path(cfg.metrics.fid_inception_path or "").name,
        "~metrics.fid_dims": lambda: {i: d for d, i in InceptionV3.BLOCK_INDEX_BY_DIM.items()}[FID_BLOCK],
        "~metrics.fid_input": lambda: "[0, 1]",
        "~metrics.facenet_weights": lambda: Path(cfg.metrics.facenet_path or "").name,
        "~metrics.facenet_size": lambda: InceptionResnetV1.image_size,
        "~metrics.facenet_input": lambda: "(255x - 127.5) / 128",
        "~metrics.student.sample_rendering": lambda: (
            f"800 -> {cfg.attack.render_size} -> {cfg.data.image_size}"
            if cfg.attack.render_size not in (None, cfg.data.image_size)
            else f"800 -> {cfg.data.image_size}"
        ),
    }
    if key.startswith("~"):
        return plain(derived[key]())
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return plain(value)


def paper_config(name: str) -> Config:
    return load_config(ROOT / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("name", DATASETS)
def test_paper_configs_hold_the_papers_settings(name):
    cfg = paper_config(name)
    assert cfg.target.arch == "resnet152" and cfg.eval_model.arch == "inception_v3"
    assert cfg.data.image_size == 224 and cfg.data.test_fraction == 0.1 and cfg.data.split_seed == 42
    assert (cfg.attack.candidates, cfg.attack.final_samples, cfg.attack.final_draws) == (200, 50, 100)
    assert cfg.attack.steps == (50 if name == "facescrub" else 70)
    assert cfg.prior.kind == "torchscript" and cfg.prior.latent_dim == 512
    assert cfg.target.epochs == 100 and cfg.target.milestones == [0.75, 0.9]


@pytest.mark.parametrize("name", DATASETS)
def test_paper_config_matches_ppa_or_says_why_not(name):
    cfg = paper_config(name)
    unexplained = []
    for key, ppa, where in ppa_table(name):
        ours = lsmia_value(cfg, key)
        if ours != ppa and key not in differences(name):
            unexplained.append(f"{key}: lsmia {ours!r}, PPA {ppa!r} (PPA {where})")
    assert not unexplained, "differences from PPA not listed in DIFFERENCES:\n" + "\n".join(unexplained)


@pytest.mark.parametrize("name", DATASETS)
def test_every_listed_difference_is_a_difference(name):
    # a stale entry would hide a later difference in the same setting
    cfg = paper_config(name)
    table = {key: ppa for key, ppa, _ in ppa_table(name)}
    for key, reason in differences(name).items():
        assert key in table and reason, key
        assert lsmia_value(cfg, key) != table[key], f"{key} now matches PPA: remove it from the differences"


@pytest.mark.parametrize("name", DATASETS)
def test_paper_smoothing_is_ppas_warm_up(name):
    cfg = paper_config(name).target

    def ls_scheduler(epoch: int, alpha: float, num_epochs: int) -> float:  # PPA train_model.py:51-58, as written
        if epoch < 50:
            return 0.0
        elif epoch < 75:
            factor = 1 / (num_epochs - 50)
            return alpha * factor * (epoch + 1 - 50)
        else:
            return alpha

    for alpha in (-0.05, -0.1):
        ours = alpha_trajectory(cfg.smoothing.model_copy(update={"alpha": alpha}), cfg.epochs)
        assert ours == pytest.approx([ls_scheduler(e, alpha, cfg.epochs) for e in range(cfg.epochs)], rel=1e-12)
    # alpha >= 0: constant, no scheduler (train_model.py:59-62)
    assert set(alpha_trajectory(cfg.smoothing.model_copy(update={"alpha": 0.1}), cfg.epochs)) == {0.1}


# --------------------------------------------------------------------------- ImageNet weights


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize(
    ("section", "weights"), [("target", "resnet152-f82ba261.pth"), ("eval_model", "inception_v3_google-0cc3c7bd.pth")]
)
def test_paper_configs_require_torchvisions_imagenet_weights(name, section, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative models/ paths lead nowhere here
    model_cfg = getattr(paper_config(name), section)
    with pytest.raises(LsmiaError) as err:
        require_pretrained_weights(model_cfg, section)
    message = str(err.value)
    assert "\n" not in message and weights in message and f"{section}.pretrained_path" in message
    assert "does not exist" in message
    with pytest.raises(LsmiaError, match=rf"{section}.pretrained_path is not set: place .*{weights}"):
        require_pretrained_weights(model_cfg.model_copy(update={"pretrained_path": None}), section)
    write_weights(tmp_path / "models" / weights, {})
    require_pretrained_weights(model_cfg, section)  # present: no error
    require_pretrained_weights(model_cfg.model_copy(update={"pretrained": False, "pretrained_path": None}), section)


def test_missing_weights_fail_the_stage_and_the_study_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = paper_config("facescrub")
    with pytest.raises(LsmiaError, match=r"eval_model.pretrained_path .*inception_v3_google-0cc3c7bd.pth"):
        stage_train(cfg, "eval", tmp_path / "no_data_yet.pt", tmp_path / "eval", torch.device("cpu"))
    args = [
        "study",
        "--params",
        str(ROOT / "configs/facescrub.yaml"),
        "-S",
        "run.device=cpu",
        "-S",
        "run.tracking=false",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "resnet152-f82ba261.pth" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", DATASETS)
def test_missing_metric_weights_fail_the_study_before_any_work(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for weights in ("resnet152-f82ba261.pth", "inception_v3_google-0cc3c7bd.pth"):  # the ImageNet files are there
        write_weights(tmp_path / "models" / weights, {})
    args = ["study", "--params", str(ROOT / f"configs/{name}.yaml"), "-S", "run.device=cpu", "-S", "run.tracking=false"]
    for missing, setting in (
        ("pt_inception-2015-12-05-6726825d.pth", "metrics.fid_inception_path"),
        ("20180402-114759-vggface2.pt", "metrics.facenet_path"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"{setting} models/{missing} does not exist" in result.output and "github.com" in result.output
        assert not (tmp_path / "out").exists()
        write_weights(tmp_path / "models" / missing, {})  # present (the loaders check the contents): the next one


def test_pretrained_path_loads_torchvision_weights_from_disk(tmp_path):
    # torchvision's key names; the ImageNet head (fc) is not the classifier's head and stays fresh
    file = write_weights(
        tmp_path / "resnet18-f37072fd.pth",
        {"layer1.0.bn1.weight": torch.full((64,), 0.5), "fc.weight": torch.ones(1000, 512)},
    )
    model = build_classifier("resnet18", 3, 224, pretrained_path=file)
    bn = model.get_submodule("backbone.layer1.0.bn1")
    assert isinstance(bn, nn.BatchNorm2d) and torch.equal(bn.weight, torch.full((64,), 0.5))
    assert model.head.weight.shape == (3, 512) and not torch.equal(model.head.weight, torch.ones(3, 512))


# --------------------------------------------------------------------------- the evaluation model's settings


def tiny_data(size: int = 8) -> FaceData:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 1] * 4)
    return FaceData(train=ImageSet(images, labels), test=ImageSet(images[:2], labels[:2]), class_names=["a", "b"])


def test_image_size_trains_and_predicts_at_that_size(tmp_path, monkeypatch):
    import lsmia.training.classifier as training

    seen: list[tuple[int, ...]] = []
    augment = training.training_augment

    def recording(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return augment(x, *args, **kwargs)

    monkeypatch.setattr(training, "training_augment", recording)
    cfg = ClassifierConfig(arch="smallvgg", width=4, epochs=1, batch_size=4, image_size=12)
    result = train_classifier(cfg, tiny_data(8), tmp_path, torch.device("cpu"), show_progress=False)
    assert seen and set(seen) == {(12, 12)}  # the 8 px images are resized to 12 before the augmentation
    assert result.model.image_size == 12 and load_classifier(result.model_path).image_size == 12
    seen.clear()
    default = train_classifier(
        cfg.model_copy(update={"image_size": None}),
        tiny_data(8),
        tmp_path / "d",
        torch.device("cpu"),
        show_progress=False,
    )
    assert set(seen) == {(8, 8)} and default.model.image_size == 8


def test_transform_input_is_torchvisions_and_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = Classifier("inception_v3", 3, 299, transform_input=True).eval()
    assert model.backbone.transform_input and model.spec()["transform_input"] is True
    x = torch.rand(1, 3, 299, 299)
    torch.manual_seed(0)
    plain_model = Classifier("inception_v3", 3, 299).eval()
    assert "transform_input" not in plain_model.spec()  # other checkpoints keep their bytes
    with torch.no_grad():
        assert not torch.allclose(model(x), plain_model(x))  # the same weights see a re-scaled input
    save_classifier(model, tmp_path / "eval.pt")
    loaded = load_classifier(tmp_path / "eval.pt")
    assert loaded.backbone.transform_input
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(LsmiaError, match=r"transform_input applies to inception_v3 only, not resnet152"):
        build_config({"target": {"arch": "resnet152", "transform_input": True}})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["facescrub", "celeba"])
def test_paper_config_runs_end_to_end_on_tiny_real_layouts(name, tmp_path, monkeypatch):
    data_root = tmp_path / name
    (write_facescrub if name == "facescrub" else write_celeba)(data_root)
    generator = tmp_path / "stylegan.pt"
    torch.jit.script(TinyStyleGAN()).save(str(generator))
    # torchvision's key names for a tensor of each backbone (at 64 px the stems change shape and stay fresh)
    resnet = write_weights(tmp_path / "models/resnet152-f82ba261.pth", {"bn1.weight": torch.full((64,), 0.5)})
    inception = write_weights(
        tmp_path / "models/inception_v3_google-0cc3c7bd.pth", {"Conv2d_1a_3x3.bn.weight": torch.full((32,), 0.5)}
    )
    monkeypatch.chdir(tmp_path)
    shrink = [
        f"data.root={data_root}",
        "data.image_size=64",
        "data.test_fraction=0.34",
        f"prior.path={generator}",
        f"target.pretrained_path={resnet}",
        f"eval_model.pretrained_path={inception}",
        "run.device=cpu",
        "run.tracking=false",
        "run.out_dir=out",
        "target.epochs=1",
        "target.batch_size=4",
        "eval_model.epochs=1",
        "eval_model.batch_size=4",
        "attack.targets=2",
        "attack.pool_size=6",
        "attack.candidates=2",
        "attack.final_samples=1",
        "attack.steps=1",
        "attack.final_draws=2",
        "attack.batch_size=4",
        "metrics.student.epochs=1",
        "metrics.student.batch_size=4",
        "study.alphas=[-0.05]",
        "data.num_identities=4",
        "metrics.fid_inception_path=null",  # FID Inception and FaceNet: tests/test_comparable_metrics.py
        "metrics.facenet_path=null",
    ]
    args = ["study", "--params", str(ROOT / "configs" / f"{name}.yaml")]
    for item in shrink:
        args += ["-S", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out/metrics/alpha-0.05_seed0.json").read_text())
    assert metrics["num_targets"] == 2 and 0.0 <= metrics["final_acc1"] <= 1.0
    assert "attribute_acc" not in metrics  # real data has no attribute ground truth
    data = FaceData.load(tmp_path / "out/data/dataset.pt")
    assert data.meta["split"] == "ppa" and len(data.train) == int(0.66 * (12 if name == "facescrub" else 16))
    eval_model = load_classifier(tmp_path / "out/models/eval/model.pt")
    assert eval_model.image_size == 299 and eval_model.backbone.transform_input
    attack = torch.load(tmp_path / "out/attacks/alpha-0.05_seed0/attack.pt", weights_only=False)
    assert attack["final_images"].shape[-1] == 299 and attack["meta"]["config"]["clip"] is False
