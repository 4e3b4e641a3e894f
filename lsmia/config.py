"""The one configuration schema of lsmia, mirrored by ``params.yaml``.

Every section is a pydantic model with ``extra="forbid"``, so an unknown key is
an error that names the key. CLI flags override values through dotted paths
(``--set attack.steps=20``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from lsmia.errors import LsmiaError

SEED_MAX = 2**62  # seeds get offsets (e.g. +1000) and must stay within torch's 64-bit seeds
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


def check_seed(value: int, source: str) -> int:
    """A seed given outside the config (e.g. ``--seed``), checked like ``run.seed``."""
    if not 0 <= value <= SEED_MAX:
        raise LsmiaError(
            f"invalid seed {value} from {source}: a seed must be a whole number from 0 to {SEED_MAX} (2**62)"
        )
    return value


def _listed_once(values: list[Any], what: str) -> None:
    if not values:
        raise ValueError(f"list at least one {what}")
    seen: list[Any] = []
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value} is listed twice: list each {what} once")
        seen.append(value)


def _finite_alpha(value: float) -> float:
    if not math.isfinite(value) or value > 1.0:
        raise ValueError(f"alpha must be a finite number <= 1, got {value}")
    return value


class Section(BaseModel):
    # allow_inf_nan=False: every float of the schema is finite (an infinite lr or difficulty ran to NaN output)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Optimiser settings torch accepts (Adam's betas in [0, 1), a positive lr, momentum >= 0); anything else is a
# one-line config error rather than a traceback from inside torch
AdamBeta = Annotated[float, Field(ge=0.0, lt=1.0)]
LearningRate = Annotated[float, Field(gt=0.0)]
Momentum = Annotated[float, Field(ge=0.0)]


class DataConfig(Section):
    source: Literal["builtin", "facescrub", "celeba", "imagefolder"] = "builtin"
    root: Path | None = None  # real data: data set root on disk
    public_root: Path | None = None  # real data: image folder for the prior (e.g. FFHQ)
    image_size: int = Field(32, ge=8)
    num_identities: int = Field(50, ge=2)  # private identities (builtin) / top-N (celeba)
    num_public_identities: int = Field(400, ge=1)  # builtin only: many identities so attributes generalise
    images_per_identity: int = Field(40, ge=2)  # builtin: private images per identity
    public_images_per_identity: int = Field(10, ge=1)  # builtin
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # PPA: 90/10
    split_seed: Seed = 42  # PPA: 42
    # stratified: test_fraction of each identity's images (at least one per side); ppa: PPA's global shuffle of all
    # images, np.random.seed(split_seed) + shuffle, the first int((1 - test_fraction) * N) train (PPA
    # datasets/facescrub.py:71-76, datasets/celeba.py:37-42); an identity may then have no test image
    split: Literal["stratified", "ppa"] = "stratified"
    # celeba: aligned = img_align_celeba/ (178x218, shorter side resized, centre crop); hd_cropped = the output folder
    # of HD-CelebA-Cropper at face factor 0.65, 224 px, bicubic, the crops PPA trained on (PPA README.md:126)
    celeba_layout: Literal["aligned", "hd_cropped"] = "aligned"
    # celeba: how identities with equal image counts are ranked for the top num_identities: smaller_id, or
    # first_listed (first line in identity_CelebA.txt first: PPA's stable sort of a Counter, datasets/celeba.py:29-34)
    celeba_tie_break: Literal["smaller_id", "first_listed"] = "smaller_id"
    seed: Seed = 0  # builtin: rendering seed
    difficulty: float = Field(1.0, ge=0.0)  # builtin: strength of the nuisance factors


class AugmentConfig(Section):
    crop_scale: tuple[float, float] = (0.85, 1.0)  # PPA: RandomResizedCrop(scale 0.85-1, ratio 1)
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.1, 0.1)  # PPA


class ClassifierConfig(Section):
    arch: str = "smallresnet"
    width: int = Field(32, ge=4)  # smallresnet base width
    pretrained_path: Path | None = None  # local file only
    # PPA's `pretrained: true` (configs/training/targets/ResNet152_FaceScrub.yaml:7): start from torchvision's ImageNet
    # weights, read from pretrained_path; true makes a missing pretrained_path or file an error naming the file
    pretrained: bool = False
    # input size the model trains and predicts at (training images resized to it before augmentation); None: the
    # data's image_size. PPA trains Inception-v3 at 299 (configs/training/evaluation/Inception_V3_FaceScrub.yaml:12)
    image_size: int | None = Field(None, ge=8)
    # inception_v3 only: torchvision's transform_input (re-scales ImageNet-normalised input to the [-1, 1] the Google
    # weights expect); torchvision sets it with ImageNet weights (models/inception.py:464-465), so PPA's pretrained
    # Inception has it on top of its Normalize(0.5, 0.5)
    transform_input: bool = False
    epochs: int = Field(20, ge=1)  # PPA: 100; 20 keeps the default study within 15 min on 2 CPU cores
    batch_size: int = 64  # at least 2: a one-image batch is dropped (BatchNorm cannot train on it)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: LearningRate = 1e-3
    betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    momentum: Momentum = 0.9
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[float] = [0.75, 0.9]  # fractions of the epochs (PPA: 75 and 90 of 100)
    gamma: float = Field(0.1, gt=0.0)
    augment: AugmentConfig = AugmentConfig()
    aux_loss_weight: float = 0.4  # inception_v3 auxiliary logits (PPA: 1.0, models/classifier.py:308-313)

    @model_validator(mode="after")
    def _inception_only(self) -> ClassifierConfig:
        if self.transform_input and self.arch != "inception_v3":
            raise ValueError(f"transform_input applies to inception_v3 only, not {self.arch}: set it to false")
        return self

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v: int) -> int:
        if v < 2:
            raise ValueError(
                f"batch_size must be at least 2, got {v}: one-image batches are dropped (BatchNorm "
                "cannot train on them), so training would take no step"
            )
        return v


class SmoothingConfig(Section):
    alpha: float = 0.0
    schedule: Literal["constant", "reference", "upstream", "linear"] = "linear"
    warmup_start: float = Field(0.5, ge=0.0, le=1.0)  # linear: fraction of epochs where the ramp starts
    warmup_end: float = Field(0.75, ge=0.0, le=1.0)  # linear: fraction of epochs where alpha is reached
    negative_only: bool = True  # the paper warms up negative alpha only; positive alpha stays constant

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _finite_alpha(v)

    @model_validator(mode="after")
    def _window(self) -> SmoothingConfig:
        if self.warmup_end < self.warmup_start:
            raise ValueError("warmup_end must be >= warmup_start")
        return self


class NoDefense(Section):
    """The undefended target: training is exactly the one without a defense."""

    kind: Literal["none"] = "none"


class MidSettings(Section):
    """MID (Wang et al., AAAI 2021): a variational information bottleneck before the head (lsmia.defenses.mid)."""

    kind: Literal["mid"]
    mid_beta: float = Field(0.01, ge=0.0)  # weight of KL(q(z|x) || N(0, I)) (reference code: 0.01)


class BidoSettings(Section):
    """BiDO-HSIC (Peng et al., KDD 2022): dependence penalties on every block's output (lsmia.defenses.bido)."""

    kind: Literal["bido"]
    bido_lambda_x: float = Field(0.05, ge=0.0)  # weight of dependence on the input (reference: 0.05)
    bido_lambda_y: float = Field(0.5, ge=0.0)  # weight of dependence on the label (reference: 0.5; VMI: 2)
    bido_measure: Literal["nhsic", "hsic"] = "nhsic"  # normalised HSIC (reference code) or plain HSIC
    bido_label_kernel: Literal["linear", "gaussian"] = "linear"  # kernel on one-hot labels (reference: linear)


class TlSettings(Section):
    """TL-DMI (Ho et al., CVPR 2024): public pre-training, the first blocks frozen (lsmia.defenses.tl)."""

    kind: Literal["tl"]
    tl_trained_layers: int = Field(2, ge=1)  # last blocks (head = 1) trained on private data; the rest frozen
    tl_pretrain_epochs: int = Field(0, ge=0)  # epochs on the public identities; 0: the target's epochs


# A training-time defense of the target (lsmia.defenses), chosen by ``kind``: each kind has its own settings, so a
# setting of another defense is an error rather than silently ignored. Defaults are the references' settings; the
# strengths are what a comparison varies (configs/defenses.yaml). lsmia.defenses.registry holds what each kind
# does (builder, search space); tests/test_defenses.py keeps the two equal.
DefenseConfig = Annotated[NoDefense | MidSettings | BidoSettings | TlSettings, Field(discriminator="kind")]
DEFENSE_KINDS: tuple[str, ...] = tuple(
    get_args(settings.model_fields["kind"].annotation)[0] for settings in get_args(get_args(DefenseConfig)[0])
)


def defense_settings(values: Mapping[str, Any]) -> NoDefense | MidSettings | BidoSettings | TlSettings:
    """The settings of ``values`` (a ``kind`` and its fields), validated; defaults for what is left out."""
    return TypeAdapter(DefenseConfig).validate_python(dict(values))


class TargetConfig(ClassifierConfig):
    smoothing: SmoothingConfig = SmoothingConfig()
    defense: DefenseConfig = NoDefense()


class EvalModelConfig(ClassifierConfig):
    arch: str = "smallvgg"  # a different architecture from the target (smallresnet), hard labels


class PriorConfig(Section):
    kind: Literal["dcgan", "torchscript"] = "dcgan"
    path: Path | None = None  # torchscript: the exported generator
    latent_dim: int = Field(64, ge=1)  # torchscript: declared latent size
    output_range: tuple[float, float] = (-1.0, 1.0)  # torchscript: declared output range
    center_crop: float = Field(1.0, gt=0.0, le=1.0)  # torchscript: central fraction kept (PPA: 800/1024 = 0.78125)
    width: int = Field(32, ge=8)  # 32 px: G ~0.3 M params, ~7 s per epoch of 4,000 images on one CPU thread
    mapping_layers: int = Field(2, ge=0)  # dcgan: Linear+LeakyReLU layers z -> w (StyleGAN: 8); 0: plain DCGAN, z only
    w_dim: int = Field(128, ge=1)  # dcgan: size of w, the mapping network's output (StyleGAN: 512)
    mapping_lr_mult: float = Field(1.0, gt=0.0)  # dcgan: the mapping network's lr / prior.lr (StyleGAN: 0.01)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: LearningRate = 2e-4
    betas: tuple[AdamBeta, AdamBeta] = (0.5, 0.999)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    sample_grid: int = Field(64, ge=1)


class AttackConfig(Section):
    targets: list[int] | int = 10  # an int N: the first N classes; a list: those classes
    pool_size: int = Field(400, ge=1)  # PPA: 2000 (FaceScrub) / 5000 (CelebA)
    candidates: int = Field(16, ge=1)  # PPA: 200 per class
    final_samples: int = Field(8, ge=1)  # PPA: 50 per class
    steps: int = Field(60, ge=0)  # PPA: 50 (FaceScrub) / 70 (CelebA)
    latent: Literal["z", "w", "w+"] = "w"  # space optimised; w = mapping(z), one vector per sample (PPA; needs a
    # mapping); w+: one w per synthesis layer (PPA's single_w: false; StyleGAN priors only)
    truncation: float = Field(1.0, ge=0.0, le=1.0)  # psi around w_avg (mapping priors); PPA: 0.5, here 1 attacks better
    lr: LearningRate = 0.005  # PPA: 0.005 (absolute, on StyleGAN's w)
    lr_relative: bool = True  # Adam lr = lr x the std of the initial latents: the same relative move in z and w
    betas: tuple[AdamBeta, AdamBeta] = (0.1, 0.1)
    loss: Literal["poincare", "ce", "max_margin", "logit"] = "poincare"  # logit: LOMMA's logit maximisation
    batch_size: int = Field(
        64, ge=1
    )  # latents optimised together, across all targets (CPU: 64 fits the caches; GPU: larger)
    selection_batch_size: int = Field(512, ge=1)
    step_crop_scale: tuple[float, float] = (0.9, 1.0)  # RandomResizedCrop each step, ratio 1
    final_draws: int = Field(20, ge=1)  # PPA: 100
    final_crop_scale: tuple[float, float] = (0.5, 0.9)
    final_crop_ratio: tuple[float, float] = (0.8, 1.2)
    seed: Seed = 0
    shards: int = Field(1, ge=1)  # DVC: attack each cell in this many class shards, then merge (same result as 1)
    checkpoint_seconds: float = Field(300.0, ge=0)  # save a resumable attack checkpoint at most this often
    # clamp the prior's images to [0, 1] in every optimisation step and in the final selection (the initial selection
    # always clamps, as PPA's candidate search does: attacks/initial_selection.py:64-68); PPA's attack configs set
    # clip: false (configs/attacking/FaceScrub_FFHQ.yaml:25)
    clip: bool = True
    # size of the saved images (all and final) that the evaluation model scores; None: the target's input size.
    # PPA renders them 1024 -> centre crop 800 -> 299 for its Inception-v3 (attack.py:225, 249; utils/stylegan.py:71-74)
    render_size: int | None = Field(None, ge=8)
    # How candidates and final samples are ranked: log = exactly, in log space (log of the mean probability);
    # softmax = PPA as published (float32 probabilities, which tie at 0 once another class leads by ~104 logits)
    ranking: Literal["log", "softmax"] = "log"
    score: Literal["probability", "margin"] = "probability"  # margin: target logit minus the best other (scale-free)
    # The adaptive attacker's view of the logits, before every loss and every ranking: a temperature T (logits / T),
    # "auto" (T = the mean per-image std of the target's logits on the initial pool) or "standardise" (each image's
    # logits to zero mean, unit std). 1.0: the logits as the target gives them (PPA as published).
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["auto", "standardise"] = 1.0
    # The negative control: the target's logits multiplied by this (same decisions, no privacy); 1.0: the target
    target_logit_scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    # The unbounded check: after ``steps``, each batch goes on until the target assigns their class to this fraction
    # of its rows (clean images), or ``max_steps`` in all; None: exactly ``steps``
    until_accept: float | None = Field(None, gt=0.0, le=1.0)
    max_steps: int = Field(0, ge=0)  # with until_accept: the step cap per batch; 0: 10 x steps
    accept_check_every: int = Field(10, ge=1)  # with until_accept: steps between the target's checks

    @model_validator(mode="after")
    def _sizes(self) -> AttackConfig:
        if self.until_accept is not None and self.max_steps and self.max_steps < self.steps:
            raise ValueError("max_steps must be 0 (10 x steps) or at least steps")
        if self.final_samples > self.candidates:
            raise ValueError("final_samples must be <= candidates")
        if self.candidates > self.pool_size:
            raise ValueError("candidates must be <= pool_size")
        if self.lr_relative and self.pool_size < 2:
            raise ValueError("lr_relative needs pool_size >= 2 to measure the latents' std")
        return self


class StudentConfig(Section):
    arch: str = "smallresnet"
    width: int = 16
    epochs: int = Field(20, ge=1)  # PPA: 75
    batch_size: int = Field(64, ge=2)  # BatchNorm cannot train on one image
    lr: LearningRate = 0.1  # PPA: SGD 0.1, momentum 0.9, wd 1e-4, cosine
    momentum: Momentum = 0.9
    weight_decay: float = Field(1e-4, ge=0.0)


class MetricsConfig(Section):
    prdc_k: int = Field(3, ge=1)
    student: StudentConfig = StudentConfig()
    inception_path: Path | None = None  # local torchvision Inception-v3 weights for inception_fid (not comparable)
    # local pytorch-fid FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for fid_tf_inception, the FID of
    # PPA and the literature; null: that metric is left out
    fid_inception_path: Path | None = None
    # local FaceNet VGGFace2 weights (facenet-pytorch's 20180402-114759-vggface2.pt) for PPA's delta_face; null: left out
    facenet_path: Path | None = None
    attribute_epochs: int = Field(6, ge=1)


class StudyConfig(Section):
    alphas: list[float] = [0.1, 0.0, -0.05]
    seeds: list[Seed] = [0]

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        _listed_once(v, "alpha")
        return [_finite_alpha(alpha) for alpha in v]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        _listed_once(v, "seed")
        return v


class SweepConfig(Section):
    """``lsmia sweep``: an Optuna search over the smoothing factor and its warm-up (see lsmia.experiments.sweep)."""

    study_name: str = Field("smoothing", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    mode: Literal["pareto", "constrained"] = "pareto"  # constrained: min attack acc@1 s.t. test_acc >= min_test_acc
    sampler: Literal["tpe", "grid", "random", "nsga2"] = "tpe"
    n_trials: int = Field(20, ge=1)  # total over all workers and resumed runs
    n_workers: int = Field(1, ge=1)  # processes on this machine
    storage: str | None = None  # RDB (postgresql://, mysql://, sqlite://) or redis:// URL; None: journal file
    # a DVC remote (name; "default": the repo's default) the workers pull the shared stages from, training and
    # pushing the ones it lacks under a lock (lsmia.experiments.remote); None: they must exist under run.out_dir
    shared_remote: str | None = None
    alpha_low: float = -0.3
    alpha_high: float = 0.3
    schedules: list[Literal["constant", "reference", "upstream", "linear"]] = ["linear"]
    warmup_start_low: float = Field(0.0, ge=0.0, le=1.0)
    warmup_start_high: float = Field(0.9, ge=0.0, le=1.0)
    min_test_acc: float = Field(0.5, ge=0.0, le=1.0)  # constrained mode: the accuracy floor
    max_acc_drop: float = Field(0.05, ge=0.0, le=1.0)  # recommendation: allowed drop from the best test accuracy
    prune: bool = True  # constrained mode: stop trials that cannot reach the floor
    startup_trials: int = Field(5, ge=0)  # tpe: random trials before the model kicks in
    population_size: int = Field(10, ge=2)  # nsga2
    heartbeat_interval: int = Field(30, ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(120, ge=2)  # seconds without heartbeat before a running trial is failed and retried
    max_retry: int = Field(2, ge=0)  # retries of a trial whose worker was lost
    log_models: bool = True  # log each trial's target model to its MLflow run
    # What is searched (lsmia sweep --defense): ls = alpha and its warm-up (above); mid, bido, tl = that defense's
    # strength (target.defense, the smoothing kept as in target.smoothing); none = the undefended model, nothing
    # searched (one trial is enough). Each defense's searched settings and their ranges around the references'
    # defaults are in lsmia.defenses.registry (MID beta log-uniform in [1e-4, 1], BiDO lambda_x in [0.005, 0.5] and
    # lambda_y in [0.05, 5], TL trained blocks an integer in [1, 4]); defense_ranges replaces some, e.g.
    # {mid_beta: [0.001, 0.1]}.
    defense: str = "ls"  # ls, or a kind of target.defense (DEFENSE_KINDS)
    defense_ranges: dict[str, tuple[float, float]] = {}

    @field_validator("defense")
    @classmethod
    def _searchable(cls, v: str) -> str:
        if v not in ("ls", *DEFENSE_KINDS):
            raise ValueError(f"name ls or one of {', '.join(DEFENSE_KINDS)}, not {v!r}")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> SweepConfig:
        if not self.alpha_low < self.alpha_high <= 1.0:
            raise ValueError("need alpha_low < alpha_high <= 1")
        for name, (low, high) in self.defense_ranges.items():
            if not 0 < low <= high:
                raise ValueError(f"defense_ranges.{name} must be [low, high] with 0 < low <= high")
        if self.sampler == "grid" and self.defense != "ls":
            raise ValueError("the grid sampler searches alpha only: use sampler tpe or random with a defense")
        if self.warmup_start_low > self.warmup_start_high:
            raise ValueError("warmup_start_low must be <= warmup_start_high")
        if not self.schedules:
            raise ValueError("schedules must name at least one of constant, reference, upstream, linear")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must be longer than heartbeat_interval")
        return self


class RunConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: Seed = 0
    # auto: the cores this process may use less the machine's load (lsmia.infra.threads); 0: torch's default (all)
    threads: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    out_dir: Path = Path("out")
    tracking: bool = True  # MLflow; the library itself never tracks, only the CLI stages


class Config(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    prior: PriorConfig = PriorConfig()
    target: TargetConfig = TargetConfig()
    eval_model: EvalModelConfig = EvalModelConfig()
    attack: AttackConfig = AttackConfig()
    metrics: MetricsConfig = MetricsConfig()
    study: StudyConfig = StudyConfig()
    sweep: SweepConfig = SweepConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that lists one key twice (YAML keeps the last silently)."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__(None, None, f"key '{key}' appears twice", second)
        self.key, self.first_line, self.second_line = key, first.line + 1, second.line + 1

    def explain(self, source: str) -> str:
        lines = (
            f"line {self.first_line}"
            if self.first_line == self.second_line
            else f"lines {self.first_line} and {self.second_line}"
        )
        return f"{source} lists key '{self.key}' twice in one mapping ({lines}; YAML would keep the last): keep one"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping. Keys a merge (``<<: *anchor``) brings
    in may be overridden: only the keys written in the mapping itself are compared."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # every mapping passes here before its merges are spliced into node.value (a merged anchor may pass first
        # as the source of another mapping's merge): check each node's own keys once, on the first pass
        if id(node) not in self.checked:
            self.checked.add(id(node))
            self.check_own_keys(node)
        super().flatten_mapping(node)

    def check_own_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader names it
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML (anchors and merge keys work); a key written twice in a mapping is a one-line
    LsmiaError naming the key and ``source``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # UniqueKeyLoader is a SafeLoader
    except DuplicateKeyError as err:
        raise LsmiaError(err.explain(source)) from None


def source_of(key: str, source: str, sources: Mapping[str, str] | None) -> str:
    """Where the value at dotted ``key`` came from: the override (flag, --set) of it or a parent, else ``source``."""
    for dotted, origin in (sources or {}).items():
        if key == dotted or key.startswith(f"{dotted}."):
            return f"from {origin}"
    inside = [origin for dotted, origin in (sources or {}).items() if dotted.startswith(f"{key}.")]
    return f"in {source} and {', '.join(inside)}" if inside else f"in {source}"


def _format_validation_error(err: ValidationError, source: str, sources: Mapping[str, str] | None = None) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    kind = _defense_tag(loc)  # pydantic names the chosen defense in the location: target.defense.<kind>.<key>
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("kind")
    key = ".".join(loc)
    where = source_of(key, source, sources)
    if first["type"] == "extra_forbidden" and kind is not None:
        return (
            f"'{key}' {where} is not a setting of defense '{kind}': remove it, or set target.defense.kind to the "
            "defense it belongs to (params.yaml lists each defense's settings)"
        )
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}' {where}: remove it or check its spelling"
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"invalid config value for '{key}' {where}: name one of {', '.join(DEFENSE_KINDS)}"
    return f"invalid config value for '{key}' {where}: {first['msg']}"


def _defense_tag(loc: list[str]) -> str | None:
    """Drop the defense kind pydantic puts after ``defense`` in an error's location; the kind, or None."""
    for i, part in enumerate(loc[:-1]):
        if part == "defense" and loc[i + 1] in DEFENSE_KINDS:
            return loc.pop(i + 1)
    return None


def parse_value(text: str) -> Any:
    """Parse a CLI override value with YAML rules (numbers, lists, booleans, null)."""
    return yaml.load(text, Loader=UniqueKeyLoader) if text != "" else ""  # UniqueKeyLoader is a SafeLoader


def apply_override(data: dict[str, Any], dotted: str, value: Any, where: str = "") -> None:
    """Set ``data[a][b][c] = value`` for ``dotted`` ``a.b.c``; ``where`` names the override in an error."""
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key, {}), dict):
            raise LsmiaError(
                f"cannot override '{dotted}'{where}: '{key}' is not a section: set "
                f"'{'.'.join(keys[: depth + 1])}' itself"
            )
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def build_config(
    data: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "config",
    sources: Mapping[str, str] | None = None,
) -> Config:
    """Validate a nested dict (plus dotted overrides) into a Config, or raise LsmiaError.

    An error names where the bad value came from: ``sources`` maps an override's dotted key to its origin
    (e.g. ``"the --alpha flag"``); any other value is blamed on ``source``.
    """
    merged = dict(data or {})
    merged = yaml.safe_load(yaml.safe_dump(merged))  # deep copy of plain data
    for dotted, value in (overrides or {}).items():
        apply_override(merged, dotted, value, where=f" {source_of(dotted, source, sources)}")
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise LsmiaError(_format_validation_error(err, source, sources)) from None


def read_params_text(path: Path) -> str:
    """The text of a params file, or a one-line error when it is a folder, unreadable or not UTF-8."""
    if path.is_dir():
        raise LsmiaError(f"params file {path} is a folder: pass a YAML file with --params")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LsmiaError(f"params file {path} is not UTF-8 text (byte {err.start}): save it as UTF-8 YAML") from None
    except OSError as err:
        raise LsmiaError(
            f"params file {path} cannot be read ({err.strerror}): pass a readable YAML file with --params"
        ) from None


def load_config(
    path: Path | str | None = "params.yaml",
    overrides: dict[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Config:
    """Load ``params.yaml`` (missing path and default name: built-in defaults) and apply overrides.

    ``sources`` names the origin of override keys for error messages (see :func:`build_config`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.exists():
            try:
                data = load_yaml(read_params_text(path), f"params file {path}") or {}
            except yaml.YAMLError as err:
                raise LsmiaError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): fix its syntax") from None
            if not isinstance(data, dict):
                raise LsmiaError(f"{path} must hold a mapping of sections, e.g. 'attack: {{steps: 60}}'")
        elif path.name != "params.yaml":
            raise LsmiaError(f"params file {path} does not exist: pass an existing file with --params")
    return build_config(data, overrides, source=str(path) if path else "config", sources=sources)


def split_overrides(items: list[str] | None) -> list[str]:
    """``--set`` items, where one item may hold several space-separated overrides (``-P set="a.b=1 c.d=2"``
    of an MLflow entry point); an item whose words are not all ``key=value`` (``study.alphas=[0.1, 0.0]``) stays
    whole, and empty items are dropped."""
    import shlex

    out: list[str] = []
    for item in items or []:
        try:
            words = shlex.split(item)
        except ValueError:
            words = [item]
        out += words if len(words) > 1 and all("=" in w for w in words) else [item] if item.strip() else []
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in split_overrides(items):
        if "=" not in item:
            raise LsmiaError(f"override '{item}' must look like section.key=value, e.g. attack.steps=20")
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = parse_value(value.strip())
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise LsmiaError(
                f"the value of --set {item} is not valid YAML ({problem}): write it as YAML, e.g. "
                "study.alphas=[0.1,0.0] or quote a string"
            ) from None
    return out
