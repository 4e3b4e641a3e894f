"""The generative prior: DCGAN training (EMA, resume, divergence), checkpoints and TorchScript priors."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import lsmia.training.prior as prior_training
from lsmia.config import PriorConfig
from lsmia.data.base import ImageSet
from lsmia.errors import DivergenceError, LsmiaError
from lsmia.models.generator import (
    W_AVG_BETA,
    DCGANPrior,
    Discriminator,
    Generator,
    TorchScriptPrior,
    load_dcgan_prior,
    load_prior,
    save_dcgan_prior,
    truncate,
)
from lsmia.training.prior import BN_CALIBRATION_BATCHES, augment_translation, diff_augment, train_prior, update_ema

CPU = torch.device("cpu")


class PriorSettings(TypedDict):
    latent_dim: int
    width: int
    batch_size: int
    epochs: int
    sample_grid: int
    lr: float


TINY_PRIOR = PriorSettings(latent_dim=16, width=8, batch_size=16, epochs=2, sample_grid=9, lr=2e-3)  # trains in seconds


def blobs(n: int = 64, size: int = 16, seed: int = 0) -> ImageSet:
    """Smooth random colour fields: upsampled 4x4 noise."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=gen)
    images = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return ImageSet(images.mul(255).round().to(torch.uint8), torch.zeros(n, dtype=torch.long))


def tiny_cfg(**overrides: object) -> PriorConfig:
    return PriorConfig(**{**TINY_PRIOR, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[tuple[int, dict]]]:
    out = tmp_path_factory.mktemp("prior")
    calls: list[tuple[int, dict]] = []
    result = train_prior(tiny_cfg(), blobs(), out, CPU, seed=0, on_epoch=lambda e, row: calls.append((e, row)))
    return out, result, calls


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_and_discriminator_shapes(size: int) -> None:
    g, d = Generator(12, size, 8), Discriminator(size, 8)
    images = g(torch.randn(3, 12))
    assert images.shape == (3, 3, size, size)
    assert images.abs().max() <= 1.0
    assert d(images).shape == (3,)


@pytest.mark.parametrize("size", [24, 4, 512])
def test_image_size_must_be_a_power_of_two_in_range(size: int) -> None:
    with pytest.raises(LsmiaError, match=r"data.image_size"):
        Generator(8, size, 8)


def test_dcgan_prior_outputs_images_in_unit_range_independent_of_batch() -> None:
    prior = DCGANPrior(Generator(16, 16, 8)).train()  # train() must not switch BN to batch statistics
    z = torch.randn(5, 16)
    images = prior(z)
    assert images.shape == (5, 3, 16, 16)
    assert images.min() >= 0.0 and images.max() <= 1.0
    torch.testing.assert_close(prior(z[:1]), images[:1])
    assert (prior.latent_dim, prior.image_size) == (16, 16)
    assert not any(p.requires_grad for p in prior.parameters())


def test_sample_latents_is_reproducible_standard_normal() -> None:
    prior = DCGANPrior(Generator(16, 16, 8))
    a = prior.sample_latents(4000, torch.Generator().manual_seed(3))
    b = prior.sample_latents(4000, torch.Generator().manual_seed(3))
    c = prior.sample_latents(4000, torch.Generator().manual_seed(4))
    assert a.shape == (4000, 16) and a.device.type == "cpu"
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item()) < 0.02 and abs(a.std().item() - 1.0) < 0.02


def test_translation_shifts_content_without_resampling() -> None:
    x = torch.zeros(64, 3, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = augment_translation(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.sum((1, 2, 3)), torch.full((64,), 3.0))  # the one pixel moved, intact
    ys, xs = out[:, 0].flatten(1).argmax(1).div(16, rounding_mode="floor"), out[:, 0].flatten(1).argmax(1) % 16
    assert (ys - 8).abs().max() <= 2 and (xs - 8).abs().max() <= 2  # up to 1/8 of 16 px
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=False))) > 5


def test_diff_augment_keeps_gradients() -> None:
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    diff_augment(x, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_update_ema_interpolates_parameters_and_copies_buffers() -> None:
    model, ema = Generator(4, 16, 8), Generator(4, 16, 8)
    ema.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None
                m.running_mean.fill_(3.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, decay=0.75)
    for p_ema, p_old in zip(ema.parameters(), before, strict=False):
        torch.testing.assert_close(p_ema, p_old + 0.25)
    bn = ema.stem[2]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    assert torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 3.0))


def test_training_writes_prior_checkpoint_and_samples(trained) -> None:
    out, result, calls = trained
    assert result.checkpoint_path == out / "prior.pt" and result.checkpoint_path.exists()
    assert (out / "checkpoint.pt").exists()
    assert result.epochs_run == 2
    assert [e for e, _ in calls] == [1, 2]
    assert all({"loss_g", "loss_d"} <= set(row) for _, row in calls)
    assert all(torch.isfinite(torch.tensor(result.metrics[k])) for k in ("loss_g", "loss_d"))
    with Image.open(result.samples_path) as png:
        assert png.size == (3 * 16 + 4, 3 * 16 + 4)  # 3x3 grid of 16 px with 1 px padding


def test_ema_generator_differs_from_raw_and_lies_towards_it(trained) -> None:
    out, _, _ = trained
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = tiny_cfg()
        init = Generator(16, 16, 8, cfg.mapping_layers, cfg.w_dim)  # train_prior builds G first from the run seed
    names = [n for n, _ in init.named_parameters()]
    raw = torch.cat([ckpt["generator"][n].flatten() for n in names])
    ema = torch.cat([ckpt["generator_ema"][n].flatten() for n in names])
    start = torch.cat([p.detach().flatten() for p in init.parameters()])
    assert not torch.allclose(raw, ema)
    assert (ema - raw).norm() < (start - raw).norm()  # an average over the path from start to raw
    assert (ema - start).norm() > 0.1 * (raw - start).norm()


def test_prior_checkpoint_round_trip(trained, tmp_path: Path) -> None:
    out, _, _ = trained
    prior = load_prior(tiny_cfg(), out / "prior.pt")
    assert isinstance(prior, DCGANPrior) and (prior.latent_dim, prior.image_size) == (16, 16)
    z = torch.randn(4, 16)
    save_dcgan_prior(prior.generator, tmp_path / "copy.pt")
    torch.testing.assert_close(load_dcgan_prior(tmp_path / "copy.pt")(z), prior(z), rtol=0, atol=0)
    images = prior(z)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    return {f"{part}.{k}": v for part in ("generator", "discriminator", "generator_ema") for k, v in ckpt[part].items()}


def test_resume_after_interruption_matches_uninterrupted_run(trained, tmp_path: Path) -> None:
    out, _, _ = trained
    first = train_prior(tiny_cfg(epochs=1), blobs(), tmp_path, CPU, seed=0)
    resumed = train_prior(tiny_cfg(epochs=2), blobs(), tmp_path, CPU, seed=0)
    assert (first.epochs_run, resumed.epochs_run) == (1, 1)
    interrupted, uninterrupted = _weights(tmp_path / "checkpoint.pt"), _weights(out / "checkpoint.pt")
    assert interrupted.keys() == uninterrupted.keys()
    assert all(torch.equal(interrupted[k], uninterrupted[k]) for k in interrupted)
    a = torch.load(tmp_path / "prior.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "prior.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_complete_checkpoint_trains_nothing_and_foreign_one_is_ignored(tmp_path: Path) -> None:
    public = blobs(32)
    train_prior(tiny_cfg(epochs=1), public, tmp_path, CPU, seed=0)
    assert train_prior(tiny_cfg(epochs=1), public, tmp_path, CPU, seed=0).epochs_run == 0
    assert train_prior(tiny_cfg(epochs=1), public, tmp_path, CPU, seed=1).epochs_run == 1  # other seed
    assert train_prior(tiny_cfg(epochs=1, lr=1e-3), public, tmp_path, CPU, seed=1).epochs_run == 1
    assert train_prior(tiny_cfg(epochs=1, lr=1e-3), blobs(32, seed=5), tmp_path, CPU, seed=1).epochs_run == 1


def test_non_finite_loss_raises_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    steps_per_epoch, augments_per_step = 64 // TINY_PRIOR["batch_size"], 3

    def poisoned(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        calls["n"] += 1
        out = diff_augment(x, gen)
        return out * float("nan") if calls["n"] > steps_per_epoch * augments_per_step else out

    monkeypatch.setattr(prior_training, "diff_augment", poisoned)
    with pytest.raises(DivergenceError, match=r"prior.lr"):
        train_prior(tiny_cfg(epochs=3), blobs(), tmp_path, CPU, seed=0)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "prior.pt").exists()


def test_huge_learning_rate_diverges(tmp_path: Path) -> None:
    with pytest.raises(DivergenceError):
        train_prior(tiny_cfg(lr=1e30), blobs(), tmp_path, CPU, seed=0)


@pytest.mark.parametrize(
    "public, batch_size, match",
    [
        (None, 16, "public images"),
        (blobs(8), 16, "prior.batch_size"),
        (ImageSet(torch.zeros(32, 3, 16, 8, dtype=torch.uint8), torch.zeros(32)), 16, "square"),
        (blobs(32, size=24), 16, "power-of-two"),
    ],
)
def test_bad_public_set_is_a_user_error(public, batch_size: int, match: str, tmp_path: Path) -> None:
    with pytest.raises(LsmiaError, match=match):
        train_prior(tiny_cfg(batch_size=batch_size), public, tmp_path, CPU, seed=0)


class TinyImageNet(nn.Module):
    """Latents [N, 8] -> tanh images [N, 3, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3 * 8 * 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(3.0 * self.fc(z)).view(-1, 3, 8, 8)


class NotAnImageNet(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * 2.0


def _scripted(module: nn.Module, path: Path, trace: bool = False) -> Path:
    torch.manual_seed(0)
    scripted = torch.jit.trace(module, torch.randn(2, 8)) if trace else torch.jit.script(module)
    scripted.save(str(path))
    return path


@pytest.mark.parametrize("trace", [False, True])
def test_torchscript_prior_maps_declared_range_to_unit_interval(tmp_path: Path, trace: bool) -> None:
    module = TinyImageNet()
    path = _scripted(module, tmp_path / "g.pt", trace)
    prior = load_prior(PriorConfig(kind="torchscript", path=path, latent_dim=8, output_range=(-1.0, 1.0)), None)
    assert isinstance(prior, TorchScriptPrior) and (prior.latent_dim, prior.image_size) == (8, 8)
    z = prior.sample_latents(6, torch.Generator().manual_seed(0))
    images = prior(z)
    assert images.shape == (6, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    expected = (torch.jit.load(str(path))(z) + 1) / 2
    torch.testing.assert_close(images, expected)
    assert images.min() < 0.1 and images.max() > 0.9  # the whole declared range is used


def test_torchscript_prior_clamps_outside_declared_range(tmp_path: Path) -> None:
    path = _scripted(TinyImageNet(), tmp_path / "g.pt")
    prior = load_prior(PriorConfig(kind="torchscript", path=path, latent_dim=8, output_range=(0.0, 1.0)), None)
    images = prior(torch.randn(6, 8))
    assert images.min() == 0.0 and images.max() <= 1.0  # tanh outputs below 0 are clamped


def test_torchscript_wrong_latent_dim_names_the_fix(tmp_path: Path) -> None:
    path = _scripted(TinyImageNet(), tmp_path / "g.pt")
    with pytest.raises(LsmiaError, match=r"prior.latent_dim"):
        load_prior(PriorConfig(kind="torchscript", path=path, latent_dim=5), None)


def test_torchscript_non_image_output_is_a_user_error(tmp_path: Path) -> None:
    path = _scripted(NotAnImageNet(), tmp_path / "g.pt")
    with pytest.raises(LsmiaError, match=r"not float images \[N, 3, S, S\]"):
        load_prior(PriorConfig(kind="torchscript", path=path, latent_dim=8), None)


def test_missing_or_foreign_files_are_user_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(LsmiaError, match="does not exist"):
        load_prior(PriorConfig(kind="torchscript", path=tmp_path / "none.pt", latent_dim=8), None)
    with pytest.raises(LsmiaError, match=r"prior.path"):
        load_prior(PriorConfig(kind="torchscript", latent_dim=8), None)
    with pytest.raises(LsmiaError, match="not a TorchScript file"):
        load_prior(PriorConfig(kind="torchscript", path=junk, latent_dim=8), None)
    with pytest.raises(LsmiaError, match="does not exist: run 'lsmia train-prior'"):
        load_prior(PriorConfig(), tmp_path / "none.pt")
    with pytest.raises(LsmiaError, match="lsmia train-prior"):
        load_prior(PriorConfig(), None)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(LsmiaError, match="not an lsmia DCGAN prior"):
        load_prior(PriorConfig(), tmp_path / "other.pt")
    with pytest.raises(LsmiaError, match="high > low"):
        load_prior(PriorConfig(kind="torchscript", path=junk, latent_dim=8, output_range=(1.0, -1.0)), None)


# --- the mapping network, w_avg and truncation ---

MAPPED = dict(mapping_layers=2, w_dim=12)


def plain_dcgan_16px(latent_dim: int) -> nn.Sequential:
    """The DCGAN as lsmia built it before the mapping network existed (16 px, width 8), layer by layer."""
    return nn.Sequential(
        nn.Linear(latent_dim, 16 * 16, bias=False),
        nn.Unflatten(1, (16, 4, 4)),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(8, 3, 3, 1, 1),
        nn.Tanh(),
    )


def test_mapping_layers_zero_is_the_plain_dcgan(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = plain_dcgan_16px(10).eval()
    torch.manual_seed(0)
    new = Generator(10, 16, 8, mapping_layers=0, w_dim=99).eval()
    assert not new.has_mapping and new.w_dim == 10
    assert not any(k.startswith("mapping") or k == "w_avg" for k in new.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters(), strict=True))
    z = torch.randn(5, 10)
    assert torch.equal(new(z), old(z))
    prior = DCGANPrior(new)
    prior.configure_latent("z", 0.5)  # no w_avg: the truncation cannot apply
    assert prior.truncation is None and prior.latent_dim == 10
    assert torch.equal(prior(z), old(z).add(1).mul(0.5).clamp(0, 1))
    save_dcgan_prior(new, tmp_path / "prior.pt")
    ckpt = torch.load(tmp_path / "prior.pt", weights_only=True)
    assert set(ckpt) == {"format", "latent_dim", "image_size", "width", "state_dict"}  # the file as before


def test_plain_dcgan_fingerprint_ignores_the_mapping_settings() -> None:
    public = blobs(16)
    plain = prior_training.fingerprint(tiny_cfg(mapping_layers=0), public, 0)
    assert prior_training.fingerprint(tiny_cfg(mapping_layers=0, w_dim=7, mapping_lr_mult=0.5), public, 0) == plain
    assert prior_training.fingerprint(tiny_cfg(**MAPPED), public, 0) != plain


def test_mapping_network_trains_at_its_own_lr_multiplier() -> None:
    state = prior_training.new_state(tiny_cfg(**MAPPED, mapping_lr_mult=0.01), 16, CPU, seed=0)
    synthesis, mapping = state.opt_g.param_groups
    assert mapping["lr"] == pytest.approx(TINY_PRIOR["lr"] * 0.01) and synthesis["lr"] == TINY_PRIOR["lr"]
    assert {id(p) for p in mapping["params"]} == {id(p) for p in state.generator.mapping.parameters()}
    assert len(synthesis["params"]) + len(mapping["params"]) == len(list(state.generator.parameters()))
    plain = prior_training.new_state(tiny_cfg(mapping_layers=0), 16, CPU, seed=0)
    assert len(plain.opt_g.param_groups) == 1  # the plain DCGAN's optimiser, as before


def test_mapping_generator_maps_z_to_w_and_synthesises_from_w() -> None:
    g = Generator(16, 16, 8, **MAPPED).eval()
    z = torch.randn(4, 16)
    w = g.to_w(z)
    assert w.shape == (4, 12)
    assert torch.equal(g(z), g.synthesis(w))
    torch.testing.assert_close(g.to_w(3.0 * z), w)  # z is normalised first, as in StyleGAN
    w = g.to_w(torch.randn(4000, 16))
    assert 0.5 < w.square().mean().sqrt() < 2.0  # variance-preserving init: w keeps z's scale


def test_w_avg_is_an_exponential_moving_average_in_training_mode_only() -> None:
    g = Generator(16, 16, 8, **MAPPED)
    with torch.no_grad():
        g.w_avg.fill_(1.0)
    z = torch.randn(32, 16)
    g.eval()(z)
    assert torch.equal(g.w_avg, torch.ones(12))
    g.train()(z)
    expected = W_AVG_BETA * torch.ones(12) + (1 - W_AVG_BETA) * g.mapping(z).mean(0)
    torch.testing.assert_close(g.w_avg, expected)


def test_w_avg_is_tracked_during_training_and_saved(tmp_path: Path) -> None:
    public = blobs()
    train_prior(tiny_cfg(**MAPPED), public, tmp_path, CPU, seed=0)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    tracked = ckpt["generator"]["w_avg"]
    assert tracked.shape == (12,) and tracked.abs().sum() > 0
    assert torch.equal(ckpt["generator_ema"]["w_avg"], tracked)  # G_ema copies G's buffers, as in StyleGAN
    saved = torch.load(tmp_path / "prior.pt", weights_only=True)
    assert (saved["mapping_layers"], saved["w_dim"]) == (2, 12)
    assert torch.equal(saved["state_dict"]["w_avg"], tracked)  # BN calibration leaves w_avg alone
    prior = load_prior(tiny_cfg(**MAPPED), tmp_path / "prior.pt")
    assert isinstance(prior, DCGANPrior)
    assert prior.has_mapping and torch.equal(prior.generator.w_avg, tracked)
    with torch.no_grad():  # 64 images, 4 steps: w_avg has moved from 0 towards the mapped mean, not reached it
        mean_w = prior.generator.to_w(torch.randn(4000, 16)).mean(0)
    steps = 2 * 64 // TINY_PRIOR["batch_size"]
    assert 0.5 * (1 - W_AVG_BETA**steps) < tracked.norm() / mean_w.norm() < 1.5 * (1 - W_AVG_BETA**steps)


def test_mapping_generator_normalises_its_stem_per_feature_and_calibrates_it(tmp_path: Path) -> None:
    # w has a mean, so the stem's BN is per feature (1d); BN calibration must reach it too.
    train_prior(tiny_cfg(**MAPPED), blobs(), tmp_path, CPU, seed=0)
    g = load_dcgan_prior(tmp_path / "prior.pt").generator
    bn = g.stem[1]
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 16 * 16
    gen = torch.Generator().manual_seed(0)  # the latents calibrate_batchnorm draws for seed 0
    z = torch.cat([torch.randn(TINY_PRIOR["batch_size"], 16, generator=gen) for _ in range(BN_CALIBRATION_BATCHES)])
    with torch.no_grad():
        features = g.stem[0](g.to_w(z))
    torch.testing.assert_close(bn.running_mean, features.mean(0), atol=1e-5, rtol=1e-4)


def _mapping_prior() -> DCGANPrior:
    torch.manual_seed(0)
    prior = DCGANPrior(Generator(16, 16, 8, **MAPPED))
    with torch.no_grad():
        prior.generator.w_avg.normal_()
    return prior


def test_truncation_zero_gives_w_avg_and_one_the_raw_mapped_w() -> None:
    prior = _mapping_prior()
    prior.configure_latent("w", 0.0)
    assert prior.latent_dim == 12
    w = prior.sample_latents(6, torch.Generator().manual_seed(1))
    assert torch.equal(w, prior.generator.w_avg.expand(6, -1))
    prior.configure_latent("w", 1.0)
    w = prior.sample_latents(6, torch.Generator().manual_seed(1))
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(w, prior.generator.to_w(z))
    prior.configure_latent("w", 0.5)
    half = prior.sample_latents(6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(half, (w + prior.generator.w_avg) / 2)


def test_z_and_w_spaces_start_from_the_same_truncated_images() -> None:
    prior = _mapping_prior()
    prior.configure_latent("z", 0.5)
    z = prior.sample_latents(5, torch.Generator().manual_seed(2))
    assert z.shape == (5, 16)
    from_z = prior(z)
    prior.configure_latent("w", 0.5)
    w = prior.sample_latents(5, torch.Generator().manual_seed(2))
    torch.testing.assert_close(prior(w), from_z)
    assert from_z.min() >= 0 and from_z.max() <= 1


def test_w_space_without_a_mapping_network_is_a_one_line_error() -> None:
    prior = DCGANPrior(Generator(16, 16, 8))
    with pytest.raises(LsmiaError, match=r"no mapping network: set prior\.mapping_layers > 0") as err:
        prior.configure_latent("w", 0.5)
    assert "\n" not in str(err.value)


def test_truncation_cutoff_keeps_the_later_layers() -> None:
    w = torch.randn(2, 10, 3)
    avg = torch.randn(3)
    out = truncate(w, avg, 0.0, cutoff=8)
    assert torch.equal(out[:, :8], avg.expand(2, 8, 3)) and torch.equal(out[:, 8:], w[:, 8:])
    assert torch.equal(truncate(w, avg, None, 8), w)


# --- TorchScript StyleGAN: mapping + synthesis ---


class TinyMapping(nn.Module):
    """z [N, 8] -> w [N, num_ws, 6], one w repeated to every layer as StyleGAN2-ADA's G.mapping returns it."""

    def __init__(self, num_ws: int) -> None:
        super().__init__()
        self.fc, self.num_ws = nn.Linear(8, 6), num_ws

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.fc(z), 0.2).unsqueeze(1).repeat(1, self.num_ws, 1)


class TinySynthesis(nn.Module):
    """ws [N, num_ws, 6] -> tanh images [N, 3, 8, 8]; the first and the last layer's w both shape the image."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(6, 3 * 8 * 8), nn.Linear(6, 3 * 8 * 8)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.first(ws[:, 0]) + self.last(ws[:, -1])).view(-1, 3, 8, 8)


class TinyStyleGANExport(nn.Module):
    """The export format of the README: ``mapping`` and ``synthesis`` submodules and, optionally, ``w_avg``."""

    def __init__(self, num_ws: int = 10, declare_w_avg: bool = True) -> None:
        super().__init__()
        self.mapping, self.synthesis = TinyMapping(num_ws), TinySynthesis()
        if declare_w_avg:
            self.register_buffer("w_avg", torch.linspace(-0.5, 0.5, 6))


def _stylegan(path: Path, declare_w_avg: bool = True) -> TorchScriptPrior:
    torch.manual_seed(0)
    torch.jit.script(TinyStyleGANExport(declare_w_avg=declare_w_avg)).save(str(path))
    prior = load_prior(PriorConfig(kind="torchscript", path=path, latent_dim=8), None)
    assert isinstance(prior, TorchScriptPrior) and prior.has_mapping
    return prior


def test_torchscript_stylegan_samples_truncated_single_w_and_broadcasts_it(tmp_path: Path) -> None:
    prior = _stylegan(tmp_path / "g.pt")
    module = torch.jit.load(str(tmp_path / "g.pt"))
    assert (prior.w_dim, prior.num_ws, prior.image_size) == (6, 10, 8)
    assert torch.equal(prior.w_avg, torch.linspace(-0.5, 0.5, 6))  # declared in the export
    prior.configure_latent("w", 0.5)
    w = prior.sample_latents(4, torch.Generator().manual_seed(0))
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert w.shape == (4, 6) and prior.latent_dim == 6
    torch.testing.assert_close(w, prior.w_avg + 0.5 * (module.mapping(z)[:, 0] - prior.w_avg))
    images = prior(w)
    expected = (module.synthesis(w.unsqueeze(1).repeat(1, 10, 1)) + 1) / 2
    assert images.shape == (4, 3, 8, 8)
    torch.testing.assert_close(images, expected)
    prior.configure_latent("z", 0.5)  # StyleGAN's G(z, psi, cutoff 8): layers 8 and 9 keep the raw w
    ws = module.mapping(z)
    ws[:, :8] = prior.w_avg + 0.5 * (ws[:, :8] - prior.w_avg)
    torch.testing.assert_close(prior(z), (module.synthesis(ws) + 1) / 2)


def test_torchscript_stylegan_w_plus_optimises_one_w_per_layer_from_the_truncated_mapping(tmp_path: Path) -> None:
    prior = _stylegan(tmp_path / "g.pt")
    module = torch.jit.load(str(tmp_path / "g.pt"))
    prior.configure_latent("w+", 0.5)
    ws = prior.sample_latents(4, torch.Generator().manual_seed(0))
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert ws.shape == (4, 60) and prior.latent_dim == 60  # 10 layers x 6, flattened for the attack
    expected = module.mapping(z)
    expected[:, :8] = prior.w_avg + 0.5 * (expected[:, :8] - prior.w_avg)  # cutoff 8: the last two stay raw
    torch.testing.assert_close(ws.view(4, 10, 6), expected)
    from_w_plus = prior(ws)
    prior.configure_latent("z", 0.5)
    torch.testing.assert_close(from_w_plus, prior(z))  # w+ starts from the images z gives
    prior.configure_latent("w+", 0.5)
    moved = ws.view(4, 10, 6).clone()
    moved[:, -1] += 1.0  # the last layer alone: a different image, which one shared w could not give
    assert not torch.allclose(prior(moved.flatten(1)), prior(ws))
    torch.testing.assert_close(prior(moved.flatten(1)), (module.synthesis(moved) + 1) / 2)


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda path: DCGANPrior(Generator(16, 16, 8, mapping_layers=2)), "feeds w to its first layer only"),
        (
            lambda path: load_prior(
                PriorConfig(kind="torchscript", path=_scripted(TinyFlatStyleGAN(), path), latent_dim=8), None
            ),
            "returns one w [N, w_dim] for all layers",
        ),
    ],
)
def test_w_plus_on_a_prior_whose_synthesis_takes_one_w_is_a_one_line_error(make, fix, tmp_path: Path) -> None:
    prior = make(tmp_path / "g.pt")
    with pytest.raises(LsmiaError, match=r"attack\.latent is 'w\+' but .*set attack\.latent: w$") as err:
        prior.configure_latent("w+", 0.5)
    assert fix in str(err.value) and "\n" not in str(err.value)


class TinyFlatMapping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


class TinyFlatSynthesis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3 * 8 * 8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(w)).view(-1, 3, 8, 8)


class TinyFlatStyleGAN(nn.Module):
    """A mapping that returns w [N, w_dim] (no per-layer copies) and a synthesis that takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.mapping, self.synthesis = TinyFlatMapping(), TinyFlatSynthesis()


def test_torchscript_stylegan_without_w_avg_averages_the_mapping(tmp_path: Path) -> None:
    prior = _stylegan(tmp_path / "g.pt", declare_w_avg=False)
    module = torch.jit.load(str(tmp_path / "g.pt"))
    with torch.no_grad():
        mean = module.mapping(torch.randn(20_000, 8, generator=torch.Generator().manual_seed(5))).mean(0)
    assert prior.w_avg.shape == (10, 6)
    torch.testing.assert_close(prior.w_avg, mean, atol=0.02, rtol=0)


def test_torchscript_stylegan_with_the_wrong_latent_size_names_the_fix(tmp_path: Path) -> None:
    torch.jit.script(TinyStyleGANExport()).save(str(tmp_path / "g.pt"))
    with pytest.raises(LsmiaError, match=r"prior\.latent_dim"):
        load_prior(PriorConfig(kind="torchscript", path=tmp_path / "g.pt", latent_dim=5), None)


def test_single_forward_torchscript_prior_knows_only_z(tmp_path: Path) -> None:
    path = _scripted(TinyImageNet(), tmp_path / "g.pt")
    prior = load_prior(PriorConfig(kind="torchscript", path=path, latent_dim=8), None)
    assert not prior.has_mapping
    with pytest.raises(LsmiaError, match=r"no mapping network: export mapping and synthesis"):
        prior.configure_latent("w", 0.5)
