"""The paper's FaceScrub and CelebA configurations, run on CPU against tiny fixtures in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from PIL import Image
from typer.testing import CliRunner

from lsmia.cli import app
from lsmia.config import load_config

ROOT = Path(__file__).resolve().parents[1]
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


def write_celeba(root: Path, identities: int = 4, per_identity: int = 3) -> None:
    (root / "img_align_celeba").mkdir(parents=True)
    lines = []
    for n in range(identities * per_identity):
        name = f"{n + 1:06d}.jpg"
        Image.new("RGB", (44, 54), (40 * (n % identities), 90, 30)).save(root / "img_align_celeba" / name)
        lines.append(f"{name} {n % identities + 100}")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["facescrub", "celeba"])
def test_paper_configs_hold_the_papers_settings(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.target.arch == "resnet152" and cfg.eval_model.arch == "inception_v3"
    assert cfg.data.image_size == 224 and cfg.data.test_fraction == 0.1 and cfg.data.split_seed == 42
    assert (cfg.attack.candidates, cfg.attack.final_samples, cfg.attack.final_draws) == (200, 50, 100)
    assert cfg.attack.steps == (50 if name == "facescrub" else 70)
    assert cfg.prior.kind == "torchscript" and cfg.prior.latent_dim == 512
    assert cfg.target.epochs == 100 and cfg.target.milestones == [0.75, 0.9]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["facescrub", "celeba"])
def test_paper_config_runs_end_to_end_on_tiny_real_layouts(name, tmp_path, monkeypatch):
    data_root = tmp_path / name
    (write_facescrub if name == "facescrub" else write_celeba)(data_root)
    generator = tmp_path / "stylegan.pt"
    torch.jit.script(TinyStyleGAN()).save(str(generator))
    monkeypatch.chdir(tmp_path)
    shrink = [
        f"data.root={data_root}",
        "data.image_size=64",
        "data.test_fraction=0.34",
        f"prior.path={generator}",
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
    ]
    args = ["study", "--params", str(ROOT / "configs" / f"{name}.yaml")]
    for item in shrink:
        args += ["-S", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out/metrics/alpha-0.05_seed0.json").read_text())
    assert metrics["num_targets"] == 2 and 0.0 <= metrics["final_acc1"] <= 1.0
    assert "attribute_acc" not in metrics  # real data has no attribute ground truth
