"""Several processes (torchrun / DDP) on the CPU with gloo: training, attack split, CLI.

The multi-process tests start 2 processes each (``torch.multiprocessing`` spawn, or the real
``torchrun`` for the CLI) on tiny data, one thread per process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lsmia.attack.ppa import merge_ranks, optimise, row_batches, stage_generators
from lsmia.attack.result import AttackResult
from lsmia.config import ClassifierConfig
from lsmia.data.augment import random_resized_crop, sample_crop_params
from lsmia.errors import LsmiaError
from lsmia.infra import distributed
from lsmia.models.classifiers import build_classifier, load_classifier
from lsmia.training.classifier import (
    distributed_outputs,
    plain_batchnorm,
    train_classifier,
    train_step,
)
from tests.helpers.attack import ColourPrior, MeanColourClassifier, make_cfg
from tests.helpers.data import make_face_data

CPU = torch.device("cpu")
WORLD = 2
TRAIN_CFG = ClassifierConfig(arch="smallresnet", width=8, epochs=6, batch_size=8)
LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- one process: everything is a no-op, and the pieces the split relies on --------------------------------


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    with distributed.process_group(use_cuda=False):
        assert not distributed.launched() and not distributed.active()
        assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
        t = torch.arange(3.0)
        assert len(distributed.all_gather(t)) == 1 and torch.equal(distributed.all_gather(t)[0], t)
        assert distributed.all_reduce_(t, "mean") is t and torch.equal(t, torch.arange(3.0))
        assert distributed.rank_device(CPU) == CPU
        distributed.barrier()
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: still one process, no group
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not distributed.launched() and distributed.is_main()


def test_sample_crop_params_draws_exactly_what_the_crop_draws() -> None:
    x = torch.rand(5, 3, 8, 8)
    crop_gen, sample_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    random_resized_crop(x, (0.5, 0.9), (0.75, 1.33), gen=crop_gen)
    sample_crop_params(5, (0.5, 0.9), (0.75, 1.33), sample_gen, CPU)
    assert torch.equal(crop_gen.get_state(), sample_gen.get_state())


def test_attack_batches_split_over_ranks_merge_to_the_single_process_latents() -> None:
    """Each rank optimises its batches; merged, the latents equal one process's bit for bit."""
    cfg = make_cfg(steps=4, batch_size=4)
    prior, target = ColourPrior(), MeanColourClassifier()
    start = torch.randn(18, prior.latent_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 4]).repeat_interleave(6)
    batches = row_batches(3, 6, cfg.batch_size, "batched")

    def run(rank: int, world: int) -> torch.Tensor:
        step_gen = stage_generators(cfg.seed)[1]
        return optimise(prior, target, start, labels, batches, cfg, step_gen, CPU, False, rank, world)

    alone = run(0, 1)
    assert not torch.equal(alone, start)
    for world in (2, 3):
        parts = [run(rank, world) for rank in range(world)]
        assert not torch.equal(parts[0], alone)  # a rank alone leaves the others' rows at their start
        assert torch.equal(merge_ranks(parts, batches), alone)


def test_plain_batchnorm_turns_sync_batchnorm_back() -> None:
    model = build_classifier("smallresnet", 4, 16, width=4).eval()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # a module swap only: fine on the CPU
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    plain = plain_batchnorm(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(plain(x), model(x))


# --- two processes (spawn, gloo): DDP training ----------------------------------------------------------------


def grad_copy(param: torch.Tensor) -> torch.Tensor:
    assert param.grad is not None, "the step reached every parameter"
    return param.grad.clone()


def _ddp_worker(rank: int, port: int, base: Path) -> None:
    os.environ.update(
        WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    data = make_face_data()
    out: dict = {}
    with distributed.process_group(use_cuda=False):
        assert distributed.world_size() == WORLD and distributed.rank() == rank
        # One step on a global batch of 7 rows (shards of 4 and 3), BatchNorm in eval mode: see the test.
        torch.manual_seed(0)
        model = build_classifier("smallresnet", 4, 16, width=4).eval()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        x, y = data.train.float_images()[:7], data.train.labels[:7]
        out["step"] = train_step(distributed_outputs(model, CPU), optimizer, x, y, 0.1, 0.0)
        out["step_grads"] = [grad_copy(p) for p in model.parameters()]
        out["step_params"] = [p.detach().clone() for p in model.parameters()]
        # Training: each rank gets its own folder, so anything rank 1 wrote would show.
        epochs: list[int] = []
        full = train_classifier(
            TRAIN_CFG,
            data,
            base / f"rank{rank}",
            CPU,
            seed=0,
            show_progress=False,
            on_epoch=lambda epoch, row: epochs.append(epoch),
        )
        out.update(state=full.model.state_dict(), history=full.history, metrics=full.metrics, epochs=epochs)
        # Interrupted after epoch 0 and resumed, in one shared folder.
        train_classifier(TRAIN_CFG, data, base / "cut", CPU, seed=0, show_progress=False, stop_after_epoch=0)
        resumed = train_classifier(TRAIN_CFG, data, base / "cut", CPU, seed=0, show_progress=False)
        out.update(resumed_state=resumed.model.state_dict(), resumed_from=resumed.resumed_from_epoch)
        try:  # a global batch of 2 leaves one row per process
            train_classifier(TRAIN_CFG.model_copy(update={"batch_size": 2}), data, base / "small", CPU)
        except LsmiaError as err:
            out["small_batch_error"] = str(err)
    torch.save(out, base / f"result{rank}.pt")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    import torch.multiprocessing as mp

    base = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(free_port(), base), nprocs=WORLD, join=True)
    return base, [torch.load(base / f"result{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_ddp_step_equals_the_single_process_step_on_the_global_batch(ddp_run, tiny_data) -> None:
    """BatchNorm is in eval mode here: with batch statistics a row's output depends on the rows it
    is normalised with, so per-shard BN (the CPU case; SyncBatchNorm needs CUDA) cannot equal the
    global batch. In eval mode BN is a fixed affine map, the loss is a mean of per-row terms, and the
    averaged shard gradients (shards 4 + 3, scaled by rows * world / 7) must equal the global gradient.
    """
    _, results = ddp_run
    torch.manual_seed(0)
    model = build_classifier("smallresnet", 4, 16, width=4).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = tiny_data.train.float_images()[:7], tiny_data.train.labels[:7]
    loss_sum, _, rows = train_step(model.train_outputs, optimizer, x, y, 0.1, 0.0)
    assert rows == 7 and [r["step"][2] for r in results] == [4, 3]  # each rank ran only its shard
    assert sum(r["step"][0] for r in results) == pytest.approx(loss_sum, rel=1e-5)
    for result in results:
        for grad, dist_grad in zip((p.grad for p in model.parameters()), result["step_grads"], strict=False):
            torch.testing.assert_close(dist_grad, grad, rtol=1e-4, atol=1e-6)
        for param, dist_param in zip(model.parameters(), result["step_params"], strict=False):
            torch.testing.assert_close(dist_param, param.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_training_keeps_ranks_identical_and_only_rank0_writes(ddp_run, tiny_data) -> None:
    base, (main, other) = ddp_run
    for key, value in main["state"].items():
        assert torch.equal(value, other["state"][key]), key  # parameters and averaged BN statistics
    assert main["history"] == other["history"] and main["metrics"].keys() == other["metrics"].keys()
    assert main["epochs"] == list(range(TRAIN_CFG.epochs)) and other["epochs"] == []  # on_epoch: rank 0 only
    assert {p.name for p in (base / "rank0").iterdir()} == {
        "checkpoint.pt",
        "model.pt",
        "metrics.json",
        "model.pt.timings",  # the wall-clock sidecar
    }
    assert list((base / "rank1").iterdir()) == []
    model = load_classifier(base / "rank0" / "model.pt", num_classes=4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, main["state"][key]), key
    with torch.no_grad():
        accuracy = (model(tiny_data.test.float_images()).argmax(1) == tiny_data.test.labels).float().mean().item()
    assert accuracy == main["metrics"]["test_acc"] >= 0.75  # 4 separable colour classes
    assert main["history"][-1]["loss"] < main["history"][0]["loss"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_resume_after_interruption_gives_identical_weights(ddp_run) -> None:
    _, results = ddp_run
    for result in results:
        assert result["resumed_from"] == 1
        for key, value in result["state"].items():
            assert torch.equal(value, result["resumed_state"][key]), key
        assert "at least 4" in result["small_batch_error"]


# --- two processes (real torchrun): the CLI -------------------------------------------------------------------


def _lsmia(args: list[str], cwd: Path, nproc: int) -> str:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [*(launcher if nproc > 1 else [sys.executable]), "-m", "lsmia", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in LAUNCH_ENV:
        env.pop(key, None)
    done = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_train_and_attack_match_one_process(tmp_path: Path) -> None:
    from lsmia.models.generator import Generator, save_dcgan_prior

    data = make_face_data()
    data.save(tmp_path / "data.pt")
    torch.manual_seed(0)
    save_dcgan_prior(Generator(8, 16, 8, mapping_layers=2, w_dim=8), tmp_path / "prior.pt")  # the default w attack
    (tmp_path / "params.yaml").write_text(
        "run: {device: cpu, seed: 0, threads: 1, tracking: false}\n"
        "target: {arch: smallresnet, width: 8, epochs: 6, batch_size: 8}\n"
        "attack: {targets: 3, pool_size: 24, candidates: 4, final_samples: 2, steps: 3, batch_size: 3,"
        " selection_batch_size: 8, final_draws: 2}\n"
    )
    common = ["--data", "data.pt", "--alpha", "0.1"]
    printed = _lsmia(["train", *common, "--out-dir", "target"], tmp_path, WORLD)
    assert printed.count('"test_acc"') == 1  # only rank 0 prints
    model = load_classifier(tmp_path / "target" / "model.pt", num_classes=4)
    with torch.no_grad():
        accuracy = (model(data.test.float_images()).argmax(1) == data.test.labels).float().mean().item()
    assert accuracy >= 0.75
    attack = [*common, "--target", "target/model.pt", "--prior", "prior.pt"]
    _lsmia(["attack", *attack, "--out-dir", "two"], tmp_path, WORLD)  # 4 row batches: 2 per rank
    _lsmia(["attack", *attack, "--out-dir", "one"], tmp_path, 1)
    two, one = AttackResult.load(tmp_path / "two" / "attack.pt"), AttackResult.load(tmp_path / "one" / "attack.pt")
    for name in ("all_latents", "all_images", "final_latents", "final_images", "final_scores", "final_targets"):
        assert torch.equal(getattr(two, name), getattr(one, name)), name
    assert (tmp_path / "two" / "reconstructions.png").exists()
