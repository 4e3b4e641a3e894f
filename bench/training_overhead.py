"""lsmia's classifier training loop against a bare PyTorch loop doing the same work.

Same model (smallresnet), data (built-in faces), batch size, Adam settings and batched
augmentation (lsmia.data.augment.training_augment) in all three cases:

* ``bare``: a minimal loop: shuffle, augment, forward, cross-entropy, backward, step.
* ``lsmia_epochs``: lsmia's epoch function (_run_epoch) and LR schedule, without the
  per-epoch test evaluation, checkpoint and final metrics.
* ``train_classifier``: the whole lsmia call as the pipeline runs it (per-epoch test
  evaluation and checkpoint, final train/test metrics, model file), in a fresh directory.

An attribution pass afterwards times the extras of train_classifier once each.

    .venv/bin/python bench/training_overhead.py [--quick] [--threads 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchutil
import torch
import torch.nn.functional as F

from lsmia.config import ClassifierConfig, DataConfig
from lsmia.data.augment import training_augment
from lsmia.data.base import FaceData
from lsmia.data.synthetic import render_builtin
from lsmia.models.classifiers import Classifier, build_classifier
from lsmia.models.inference import predict_logits
from lsmia.training.classifier import _run_epoch, final_metrics, make_optimizer, make_scheduler, train_classifier
from lsmia.utils import save_torch

DEVICE = torch.device("cpu")
SEED = 0


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--identities", type=int, default=20, help="built-in identities (default 20)")
    parser.add_argument("--images-per-identity", type=int, default=30, help="images per identity (default 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--width", type=int, default=32, help="smallresnet width (default 32)")
    return benchutil.parse(parser, epochs=1, identities=4, images_per_identity=8, repeats=1, batch_size=8, width=8)


def make_data(args: argparse.Namespace) -> FaceData:
    return render_builtin(
        DataConfig(
            num_identities=args.identities,
            images_per_identity=args.images_per_identity,
            num_public_identities=1,
            public_images_per_identity=1,
            test_fraction=0.1,
        )
    )


def bare_train(cfg: ClassifierConfig, data: FaceData) -> Classifier:
    """What a hand-written loop does per epoch, nothing more."""
    torch.manual_seed(SEED)
    model = build_classifier(cfg.arch, data.num_classes, data.image_size, cfg.width).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(SEED)
    images, labels, aug = data.train.images, data.train.labels, cfg.augment
    model.train()
    for _ in range(cfg.epochs):
        for index in torch.randperm(len(images), generator=gen).split(cfg.batch_size):
            if len(index) < 2:
                continue
            x = training_augment(images[index].float().div_(255.0), aug.crop_scale, aug.flip, aug.color_jitter, gen=gen)
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def lsmia_epochs(
    cfg: ClassifierConfig, data: FaceData, layout: torch.memory_format = torch.channels_last
) -> Classifier:
    """train_classifier's epoch loop alone: no test evaluation, checkpoint or final metrics. ``layout``: the
    backbone's memory format (train_classifier's is channels_last on the CPU; contiguous is PyTorch's default)."""
    torch.manual_seed(SEED)
    model = build_classifier(cfg.arch, data.num_classes, data.image_size, cfg.width).to(DEVICE)
    model.backbone.to(memory_format=layout)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(cfg.epochs):
        _run_epoch(model, optimizer, data.train, cfg, 0.0, DEVICE, gen)
        scheduler.step()
    return model


def full_train(cfg: ClassifierConfig, data: FaceData) -> None:
    with tempfile.TemporaryDirectory(prefix="lsmia-bench-") as out_dir:  # fresh: nothing to resume from
        train_classifier(cfg, data, Path(out_dir), DEVICE, seed=SEED, show_progress=False)


def as_case(fn: Callable[..., object], *args: object) -> benchutil.Case:
    def run() -> None:
        fn(*args)

    return run


def seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def attribution(cfg: ClassifierConfig, data: FaceData) -> dict[str, float]:
    """Seconds of each extra train_classifier does beyond the epochs, for the whole run."""
    model = lsmia_epochs(cfg.model_copy(update={"epochs": 1}), data)
    optimizer = make_optimizer(cfg, model.parameters())
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": []}
    with tempfile.TemporaryDirectory(prefix="lsmia-bench-") as out_dir:
        checkpoint = seconds(lambda: save_torch(state, Path(out_dir) / "checkpoint.pt"))
    test_eval = seconds(lambda: predict_logits(model, data.test.images, 512))
    final = seconds(lambda: final_metrics(model.eval(), data, DEVICE, []))
    return {
        "per-epoch test evaluation": test_eval * cfg.epochs,
        "per-epoch checkpoint": checkpoint * cfg.epochs,
        "final metrics (train + test pass)": final,
    }


def main() -> None:
    args = parse_args()
    benchutil.setup(args.threads, "training: lsmia train_classifier vs a bare PyTorch loop")
    data = make_data(args)
    cfg = ClassifierConfig(arch="smallresnet", width=args.width, epochs=args.epochs, batch_size=args.batch_size)
    print(
        f"# smallresnet w{cfg.width} @ {data.image_size}px, {data.num_classes} classes, {len(data.train)} train / "
        f"{len(data.test)} test images, batch {cfg.batch_size}, {cfg.epochs} epochs; {args.repeats} repeats"
    )
    cases = {
        "bare": as_case(bare_train, cfg, data),
        "lsmia_epochs": as_case(lsmia_epochs, cfg, data),
        "lsmia_epochs_nchw": as_case(lsmia_epochs, cfg, data, torch.contiguous_format),
        "train_classifier": as_case(full_train, cfg, data),
    }
    rows = {name: benchutil.medians(runs) for name, runs in benchutil.interleaved(cases, args.repeats).items()}
    print()
    benchutil.print_table(rows, [benchutil.TOTAL])
    print("\nattribution of train_classifier's extras (one timing each, whole run):")
    for part, part_seconds in attribution(cfg, data).items():
        print(f"  {part:<36} {part_seconds:8.3f} s")
    bare = rows["bare"][benchutil.TOTAL]
    print(f"ratio lsmia_epochs / bare: {rows['lsmia_epochs'][benchutil.TOTAL] / bare:.2f}x")
    nchw = rows["lsmia_epochs_nchw"][benchutil.TOTAL]
    print(
        f"ratio lsmia_epochs_nchw / lsmia_epochs (the channels_last speed-up): {nchw / rows['lsmia_epochs'][benchutil.TOTAL]:.2f}x"
    )
    benchutil.print_ratio(
        "training_overhead", rows["train_classifier"][benchutil.TOTAL], bare, "train_classifier", "bare"
    )


if __name__ == "__main__":
    main()
