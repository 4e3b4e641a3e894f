"""Defenses (MID, BiDO-HSIC, TL-DMI), the logit attack loss and the equal-accuracy comparison (issue 14)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lsmia.attack.losses import identity_loss, logit_loss
from lsmia.cli import app
from lsmia.config import AttackConfig, ClassifierConfig, MidSettings, NoDefense, TargetConfig, TlSettings, load_config
from lsmia.defenses.bido import BidoDefense, centred, gaussian_kernel, hsic, linear_kernel, normalized_hsic
from lsmia.defenses.mid import MidDefense, VariationalBottleneck, gaussian_kl
from lsmia.defenses.tl import PUBLIC_DIR, TransferDefense
from lsmia.errors import LsmiaError
from lsmia.experiments import ablation
from lsmia.models.classifiers import build_classifier, load_classifier
from lsmia.reporting import defense_comparison as compare
from lsmia.training.classifier import make_optimizer, train_classifier, train_step
from tests.helpers.defenses import hand_made_results, sweep_points_record
from tests.helpers.paths import ROOT, TINY

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_target(**kw) -> TargetConfig:
    return TargetConfig(arch="smallresnet", width=8, epochs=kw.pop("epochs", 2), batch_size=8, **kw)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- MID


def test_gaussian_kl_matches_the_closed_form_by_hand():
    # N((1, 0), diag(4, 1)) vs N(0, I): 1/2 * [(1 + 4 - log 4 - 1) + (0 + 1 - 0 - 1)] = 2 - log 2
    mu, log_var = torch.tensor([[1.0, 0.0]]), torch.tensor([[math.log(4.0), 0.0]])
    assert gaussian_kl(mu, log_var).item() == pytest.approx(2.0 - math.log(2.0))
    # batch mean of the per-row sums; and torch.distributions agrees
    mu, log_var = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert gaussian_kl(mu, log_var).item() == pytest.approx(expected.item(), rel=1e-5)


def unit_sigma_bottleneck() -> VariationalBottleneck:
    """mu = h[:, :2], s such that sigma = softplus(s - 5) = 1 exactly."""
    bottleneck = VariationalBottleneck(2, 2)
    with torch.no_grad():
        bottleneck.encoder.weight.zero_()
        bottleneck.encoder.weight[:2, :2] = torch.eye(2)
        bottleneck.encoder.bias.zero_()
        bottleneck.encoder.bias[2:] = 5.0 + math.log(math.e - 1.0)
    return bottleneck


def test_bottleneck_samples_in_training_and_gives_the_mean_in_evaluation():
    bottleneck, h = unit_sigma_bottleneck(), torch.tensor([[3.0, -1.0]]).repeat(20000, 1)
    assert torch.equal(bottleneck.eval()(h), h)
    torch.manual_seed(0)
    z = bottleneck.train()(h)
    assert z.mean(0).tolist() == pytest.approx([3.0, -1.0], abs=0.03)
    assert z.std(0).tolist() == pytest.approx([1.0, 1.0], abs=0.03)


def test_mid_penalty_is_beta_times_the_kl_of_the_training_batch():
    bottleneck = unit_sigma_bottleneck().train()
    defense = MidDefense(bottleneck, beta=0.5)
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    bottleneck(h)
    # sigma = 1 everywhere, so KL = 1/2 * sum mu^2, batch mean: (1 + 4) / 2 / 2 = 1.25
    assert defense.penalty(h, torch.tensor([0, 1])).item() == pytest.approx(0.5 * 1.25)
    with torch.no_grad():
        bottleneck(h)  # no-grad passes (scoring the test set) are not captured
    assert defense.encoded == []
    defense.close()


def test_a_mid_model_saves_loads_and_resumes_exactly(tiny_data, tmp_path):
    cfg, mid = tiny_target(epochs=3), MidSettings(kind="mid", mid_beta=0.1)
    full = train_classifier(cfg, tiny_data, tmp_path / "full", CPU, seed=1, show_progress=False, defense=mid)
    assert full.model.bottleneck is not None and full.model.head.in_features == full.model.bottleneck.dim
    loaded = load_classifier(tmp_path / "full" / "model.pt", num_classes=4)
    images = tiny_data.test.float_images()
    assert torch.equal(loaded(images), full.model(images))  # evaluation uses the mean: deterministic
    train_classifier(
        cfg, tiny_data, tmp_path / "cut", CPU, seed=1, show_progress=False, defense=mid, stop_after_epoch=0
    )
    resumed = train_classifier(cfg, tiny_data, tmp_path / "cut", CPU, seed=1, show_progress=False, defense=mid)
    assert resumed.resumed_from_epoch == 1 and states_equal(resumed.model, full.model)


# --------------------------------------------------------------------------- BiDO


def direct_hsic(k: list[list[float]], q: list[list[float]]) -> float:
    """tr(K H Q H) / (n - 1)^2 written out as sums (Gretton et al. 2005, eq. 4)."""
    n = len(k)
    both = sum(k[i][j] * q[i][j] for i in range(n) for j in range(n))
    rows = sum(sum(k[i][j] for j in range(n)) * sum(q[i][j] for j in range(n)) for i in range(n))
    total = sum(map(sum, k)) * sum(map(sum, q))
    return (both - 2.0 * rows / n + total / n**2) / (n - 1) ** 2


def direct_gaussian(points: list[list[float]], sigma: float) -> list[list[float]]:
    d = len(points[0])
    return [
        [math.exp(-sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) / (2 * sigma**2 * d)) for q in points]
        for p in points
    ]


def test_gaussian_kernel_uses_the_reference_bandwidth():
    points = [[0.0, 1.0, 2.0], [1.0, 1.0, 0.0], [3.0, -1.0, 0.5], [0.5, 0.5, 0.5]]
    expected = torch.tensor(direct_gaussian(points, 5.0), dtype=torch.float64)  # exp(-||a - b||^2 / (2 * 25 * d))
    assert torch.allclose(gaussian_kernel(torch.tensor(points)), expected, rtol=1e-6, atol=0)
    narrow = torch.tensor(direct_gaussian(points, 0.7), dtype=torch.float64)
    assert torch.allclose(gaussian_kernel(torch.tensor(points), sigma=0.7), narrow, rtol=1e-5, atol=0)


def test_hsic_matches_the_sum_formula_on_known_kernels():
    x = [[0.0, 1.0], [1.0, 3.0], [2.0, -1.0], [4.0, 0.5], [1.5, 1.5]]
    k = direct_gaussian(x, 1.0)
    labels = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    q = [[sum(a * b for a, b in zip(p, r, strict=True)) for r in labels] for p in labels]  # linear kernel
    got = hsic(torch.tensor(k, dtype=torch.float64), linear_kernel(torch.tensor(labels)))
    assert got.item() == pytest.approx(direct_hsic(k, q), rel=1e-9)
    assert hsic(torch.tensor(k, dtype=torch.float64), torch.ones(5, 5, dtype=torch.float64)).item() == pytest.approx(
        0.0, abs=1e-12
    )  # a constant kernel carries no dependence


def test_normalized_hsic_matches_the_regularised_inverse_formula():
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(6, 4, generator=gen), torch.randn(6, 3, generator=gen)
    k, q = gaussian_kernel(x, 1.0), gaussian_kernel(z, 1.0)
    n, eps = 6, 1e-5
    h = np.eye(n) - np.ones((n, n)) / n
    kc, qc = h @ k.numpy() @ h, h @ q.numpy() @ h
    rk = kc @ np.linalg.inv(kc + eps * n * np.eye(n))
    rq = qc @ np.linalg.inv(qc + eps * n * np.eye(n))
    assert normalized_hsic(k, q).item() == pytest.approx(float(np.trace(rk @ rq)), rel=1e-6)
    assert torch.allclose(centred(k), torch.from_numpy(kc))


def test_bido_penalty_sums_the_dependences_of_every_block_output():
    torch.manual_seed(0)
    model = build_classifier("smallresnet", 3, 16, width=4).train()
    defense = BidoDefense(model.blocks(), 3, lambda_x=0.3, lambda_y=0.7)
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    model.train_outputs(x)
    assert len(defense.hidden) == 4  # the outputs of the stem and of 3 residual blocks (the last pooled)
    with torch.no_grad():  # the same hidden representations, computed by hand (BatchNorm on batch statistics)
        body = model.backbone
        assert isinstance(body, torch.nn.Sequential)
        h0 = body[2](body[1](body[0](model._prepare(x))))
        h1 = body[3](h0)
        h2 = body[4](h1)
        h3 = body[7](body[6](body[5](h2)))
    k_x, k_y = gaussian_kernel(x.flatten(1)), linear_kernel(torch.eye(3)[y])
    expected = sum(
        0.3 * normalized_hsic(k_x, gaussian_kernel(h.flatten(1)))
        - 0.7 * normalized_hsic(k_y, gaussian_kernel(h.flatten(1)))
        for h in (h0, h1, h2, h3)
    )
    assert defense.penalty(x, y).item() == pytest.approx(float(expected), rel=1e-4)
    assert defense.hidden == []
    defense.close()


# --------------------------------------------------------------------------- TL-DMI


def test_a_tl_step_changes_only_the_trained_blocks():
    torch.manual_seed(0)
    model = build_classifier("smallresnet", 3, 16, width=4)
    defense = TransferDefense(model, trained_layers=2)  # 5 blocks: stem, 3 residual blocks, head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(ClassifierConfig(lr=0.1), defense.trainable(model))
    model.train()
    defense.set_train_mode(model)
    train_step(
        model.train_outputs, optimizer, torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]), 0.0, 0.4, defense
    )
    after = model.state_dict()
    frozen = ("backbone.0.", "backbone.1.", "backbone.3.", "backbone.4.")  # stem conv + BN, blocks 1 and 2
    for key in before:
        changed = not torch.equal(before[key], after[key])
        if key.startswith(frozen):
            assert not changed, f"frozen {key} changed"  # weights and BatchNorm statistics
        elif not key.endswith("num_batches_tracked"):
            assert changed, f"trained {key} did not change"


def test_tl_rejects_more_trained_blocks_than_the_model_has():
    with pytest.raises(LsmiaError, match="tl_trained_layers is 6 but smallresnet has 5 blocks"):
        TransferDefense(build_classifier("smallresnet", 3, 16, width=4), trained_layers=6)


def test_tl_pretrains_on_the_public_identities_and_keeps_those_blocks(tiny_data, tmp_path):
    cfg, tl = tiny_target(epochs=2), TlSettings(kind="tl", tl_trained_layers=2, tl_pretrain_epochs=1)
    result = train_classifier(cfg, tiny_data, tmp_path, CPU, seed=0, show_progress=False, defense=tl)
    public = load_classifier(tmp_path / PUBLIC_DIR / "model.pt", num_classes=3)  # the data's 3 public identities
    assert public.num_classes == 3 and result.model.num_classes == 4
    pre, target = public.backbone.state_dict(), result.model.backbone.state_dict()
    for key in pre:  # stem and the first 2 residual blocks: the public weights and statistics, unchanged
        frozen = key.startswith(("0.", "1.", "3.", "4."))
        assert torch.equal(pre[key], target[key]) == frozen or key.endswith("num_batches_tracked"), key


def test_tl_without_public_identities_names_the_fix(tiny_data, tmp_path):
    tiny_data.public = None
    with pytest.raises(LsmiaError, match=r"set target\.pretrained_path"):
        train_classifier(tiny_target(), tiny_data, tmp_path, CPU, show_progress=False, defense=TlSettings(kind="tl"))


# --------------------------------------------------------------------------- no defense, logit loss, config


def test_kind_none_trains_exactly_as_without_the_option(tiny_data, tmp_path):
    plain = train_classifier(tiny_target(), tiny_data, tmp_path / "a", CPU, seed=2, show_progress=False)
    none = train_classifier(
        tiny_target(), tiny_data, tmp_path / "b", CPU, seed=2, show_progress=False, defense=NoDefense()
    )
    assert states_equal(plain.model, none.model) and plain.history == none.history
    assert "bottleneck" not in torch.load(tmp_path / "b" / "model.pt", weights_only=False)


def test_logit_loss_is_the_negated_target_logit():
    logits, targets = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0]]), torch.tensor([1, 2])
    assert logit_loss(logits, targets).item() == pytest.approx(-4.5)
    assert identity_loss("logit") is logit_loss and AttackConfig(loss="logit").loss == "logit"


def test_the_defense_section_validates_and_params_yaml_has_it():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.target.defense == NoDefense() and cfg.target.defense.kind == "none"
    with pytest.raises(LsmiaError, match=r"target\.defense\.kind"):
        load_config(ROOT / "params.yaml", {"target.defense.kind": "dp"})
    with pytest.raises(LsmiaError, match=r"target\.defense\.mid_beta"):
        load_config(ROOT / "params.yaml", {"target.defense.kind": "mid", "target.defense.mid_beta": -1})


def test_the_defenses_plan_validates_against_the_params():
    plan = ablation.load_plan(ROOT / "configs" / "defenses.yaml")
    configs = ablation.variant_configs(load_config(ROOT / "params.yaml"), plan)
    kinds = {cfg.target.defense.kind for cfg in configs.values()}
    losses = {cfg.attack.loss for cfg in configs.values()}
    assert kinds == {"none", "mid", "bido", "tl"} and losses == {"poincare", "ce", "max_margin", "logit"}
    assert plan.seeds == [0, 1, 2] and configs["ls@ce"].study.alphas == [0.0, -0.05, -0.1, -0.2]
    for paper in ("facescrub", "celeba"):  # the same plan on the GPU configs: -p configs/<paper>.yaml
        on_paper = ablation.variant_configs(load_config(ROOT / "configs" / f"{paper}.yaml"), plan)
        assert (
            on_paper["mid_0.01@ce"].target.defense.kind == "mid" and on_paper["mid_0.01@ce"].target.arch == "resnet152"
        )


def test_a_variant_without_alpha_zero_is_refused(tmp_path):
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    plan = ablation.AblationPlan(name="t", alphas=[0.0], variants={"ls": {"study.alphas": [-0.05]}})
    with pytest.raises(LsmiaError, match=r"add 0\.0 to the study\.alphas of variant 'ls'"):
        ablation.run_ablation(cfg, plan, CPU, log=lambda line: None)


# --------------------------------------------------------------------------- the comparison


def test_models_fronts_and_worst_cases_of_a_hand_made_ablation():
    result = compare.compare(hand_made_results())
    by_label = {(p.family, p.strength): p for p in result.points}
    assert set(by_label) == {
        ("none", "undefended"),
        ("ls", "α=-0.05"),
        ("mid", "β=0.01"),
        ("mid", "β=0.1"),
        ("mid", "β=0.05"),
    }
    assert by_label[("mid", "β=0.1")].strongest == "ce" and by_label[("mid", "β=0.01")].strongest == "poincare"
    assert sorted(by_label[("none", "undefended")].variants) == ["ls@ce", "ls@p", "none@ce", "none@p"]  # one model
    assert [p.strength for p in result.fronts["mid"]] == ["β=0.1", "β=0.01", "undefended"]  # beta 0.05: dominated
    assert [p.strength for p in result.fronts["ls"]] == ["α=-0.05", "undefended"]
    assert result.levels == pytest.approx([0.7, 0.8, 0.85, 0.88, 0.89, 0.9])  # 0.9 less 20, 10, 5, 2, 1, 0 points


def test_equal_accuracy_takes_each_defense_s_best_model_that_keeps_the_level():
    table = {(round(r["test_acc"], 6), r["defense"]): r for r in compare.compare(hand_made_results()).table}
    mid07 = table[(0.7, "mid")]  # beta 0.1 (test 0.6) falls short of 0.7; beta 0.01 (test 0.8, poincare) keeps it
    assert mid07["final_acc1"]["mean"] == pytest.approx(0.6) and mid07["model"] == "β=0.01"
    assert mid07["final_acc1"]["ci95"] == pytest.approx(12.7062047 * 0.1, rel=1e-6)  # values 0.5, 0.7: t(1) x sem
    assert mid07["delta_eval"]["mean"] == pytest.approx(350.0) and mid07["xi"]["mean"] == pytest.approx(0.3)
    assert mid07["strongest"] == "poincare"
    assert table[(0.7, "ls")]["final_acc1"] == {"mean": pytest.approx(0.3), "ci95": 0.0, "n": 2}
    assert table[(0.8, "mid")]["model"] == "β=0.01" and table[(0.8, "ls")]["model"] == "undefended"
    assert table[(0.85, "mid")]["final_acc1"]["mean"] == pytest.approx(0.8)  # nothing between: the undefended
    assert table[(0.9, "ls")]["final_acc1"]["mean"] == pytest.approx(0.8)
    explicit = compare.compare(hand_made_results(), levels=[0.55, 0.65, 0.95]).table
    assert sorted((r["test_acc"], r["defense"], r["model"]) for r in explicit) == [
        (0.55, "ls", "α=-0.05"),
        (0.55, "mid", "β=0.1"),
        (0.65, "ls", "α=-0.05"),
        (0.65, "mid", "β=0.01"),
    ]  # 0.95: no model keeps it


def test_winners_name_ties_and_levels_where_nothing_beats_the_undefended_model():
    found = compare.winners(compare.compare(hand_made_results()))
    assert [(w["test_acc"], w["defense"]) for w in found][:2] == [(0.7, "ls"), (pytest.approx(0.8), "mid")]
    assert {w["defense"] for w in found[2:]} == {"none"} and all(w["runner_up"] is None for w in found[2:])
    lines = compare.winner_lines(found)
    assert (
        lines[-1]
        == "at test accuracy 0.900: no defense has a model there with lower attack acc@1 than the undefended model"
    )
    tie = compare.winner_lines(
        [{"test_acc": 0.5, "defense": "bido = mid", "runner_up": "ls", "intervals_separate": False}]
    )
    assert tie == [
        "at test accuracy 0.500: bido = mid tie for the lowest attack acc@1 (next: ls; 95 % intervals overlap)"
    ]


def test_compare_defenses_writes_table_json_and_a_stable_figure(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(hand_made_results()))
    _, folder = compare.compare_defenses(results)
    assert folder == tmp_path
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert [w["defense"] for w in saved["winners"]] == ["ls", "mid", "none", "none", "none", "none"]
    assert saved["undefended"]["strongest"] == "poincare" and saved["fronts"]["mid"][0]["strength"] == "β=0.1"
    text = (tmp_path / "compare.md").read_text()
    assert "| 0.700 | ls | 0.300 ± 0.000 |" in text and "**ls** has the lowest attack acc@1" in text
    first = (tmp_path / "fronts.png").read_bytes()
    compare.compare_defenses(results, tmp_path / "again")
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "again" / "fronts.png").read_bytes() == first


def test_compare_defenses_cli_and_its_errors(tmp_path):
    runner = CliRunner()
    results = tmp_path / "results.json"
    results.write_text(json.dumps(hand_made_results()))
    out = runner.invoke(app, ["compare-defenses", str(results), "--out-dir", str(tmp_path / "c"), "--levels", "0.8"])
    assert out.exit_code == 0, out.output
    assert "| 0.800 | mid | 0.600 ± 1.271 |" in out.output and (tmp_path / "c" / "fronts.png").exists()
    missing = runner.invoke(app, ["compare-defenses", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "run 'lsmia ablate configs/defenses.yaml' first" in missing.output
    bad = runner.invoke(app, ["compare-defenses", str(results), "--levels", "high"])
    assert bad.exit_code == 2 and "comma-separated" in bad.output
    undefended_only = hand_made_results()
    undefended_only["rows"] = [r for r in undefended_only["rows"] if r["variant"].startswith("none")]
    results.write_text(json.dumps(undefended_only))
    assert "no defended model" in runner.invoke(app, ["compare-defenses", str(results)]).output


def write_sweep(folder: Path, record: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "points.json").write_text(json.dumps(record))
    return folder


def test_compare_defenses_overlays_sweeps_with_the_undefended_model_marked(tmp_path):
    mid = write_sweep(
        tmp_path / "sweep" / "mid",
        sweep_points_record(
            "mid",
            "mid",
            [
                ({"target.defense.kind": "mid", "target.defense.mid_beta": 0.01}, 0.8, 0.5),
                ({"target.defense.kind": "mid", "target.defense.mid_beta": 0.1}, 0.6, 0.2),
                ({"target.defense.kind": "mid", "target.defense.mid_beta": 0.05}, 0.7, 0.7),  # dominated
            ],
            undefended=True,
        ),
    )
    ls = write_sweep(tmp_path / "sweep" / "ls", sweep_points_record("ls", "ls", [({}, 0.7, 0.3)]))
    runner = CliRunner()
    out = runner.invoke(app, ["compare-defenses", str(mid), str(ls), "--out-dir", str(tmp_path / "c")])
    assert out.exit_code == 0, out.output
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [p["strength"] for p in saved["fronts"]["mid"]] == ["β=0.1", "β=0.01", "undefended"]
    assert [p["strength"] for p in saved["fronts"]["ls"]] == ["α=-0.1", "undefended"]
    assert saved["undefended"]["test_acc"]["mean"] == pytest.approx(0.9)  # mid's sweep found the study's alpha 0
    assert saved["undefended"]["variants"] == ["out/metrics/alpha0.0_seed0.json"]
    assert (tmp_path / "c" / "fronts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 0.700 | ls | 0.300 |" in out.output  # one seed: no interval
    # a second mid sweep keeps its own front, named after its study; an ablation's undefended model comes first
    again = write_sweep(tmp_path / "sweep" / "mid2", json.loads((mid / "points.json").read_text()) | {"study": "m2"})
    results = tmp_path / "results.json"
    results.write_text(json.dumps(hand_made_results()))
    both = compare.compare_sources([results, mid, again])
    assert {"mid", "ls", "mid (mid)", "mid (m2)"} == set(both.fronts)
    assert both.undefended is not None and sorted(both.undefended.test_acc) == [0, 1]  # the ablation's, 2 seeds
    several = runner.invoke(app, ["compare-defenses", str(mid), str(ls)])
    assert several.exit_code == 2 and "pass --out-dir" in several.output
    nothing = runner.invoke(app, ["compare-defenses", str(ls), "--out-dir", str(tmp_path / "d")])
    assert nothing.exit_code == 2 and "no undefended model among the inputs" in nothing.output
    empty = runner.invoke(app, ["compare-defenses", str(tmp_path / "sweep")])
    assert empty.exit_code == 2 and "neither a sweep's points.json nor an ablation's results.json" in empty.output


# --------------------------------------------------------------------------- end to end on the tiny config


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Data, prior and evaluation model of the tiny config, shared by the end-to-end tests."""
    from lsmia.stages.data import stage_data
    from lsmia.stages.prior import stage_prior
    from lsmia.stages.train import stage_train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("defenses")
    cfg = load_config(TINY, {"run.out_dir": str(root / "out")})
    data = root / "dataset.pt"
    stage_data(cfg, data, root / "summary.json")
    stage_prior(cfg, data, root / "prior", CPU)
    stage_train(cfg, "eval", data, root / "eval", CPU, seed=0)
    return root, cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "defense", [{"kind": "mid", "mid_beta": 0.1}, {"kind": "bido"}, {"kind": "tl", "tl_trained_layers": 3}]
)
def test_a_defended_target_trains_is_attacked_and_evaluated(tiny_study, defense):
    from lsmia.stages.attack import stage_attack
    from lsmia.stages.evaluate import stage_evaluate
    from lsmia.stages.train import stage_train

    root, _ = tiny_study
    cfg = load_config(TINY, {"run.out_dir": str(root / "out"), "target.defense": defense, "attack.loss": "logit"})
    out = root / f"target_{defense['kind']}"
    trained = stage_train(cfg, "target", root / "dataset.pt", out, CPU, seed=0)
    assert 0.0 <= trained.metrics["test_acc"] <= 1.0 and (out / "model.pt").exists()
    assert (out / PUBLIC_DIR / "model.pt").exists() == (defense["kind"] == "tl")
    attack = stage_attack(
        cfg,
        root / "dataset.pt",
        out / "model.pt",
        root / "prior" / "prior.pt",
        root / f"attack_{defense['kind']}",
        CPU,
        0,
    )
    assert attack.final_images.shape[0] == 4
    metrics = stage_evaluate(
        cfg,
        root / "dataset.pt",
        root / f"attack_{defense['kind']}" / "attack.pt",
        root / "eval" / "model.pt",
        out,
        root / f"metrics_{defense['kind']}.json",
        CPU,
        0.0,
        0,
    )
    assert 0.0 <= metrics["final_acc1"] <= 1.0 and math.isfinite(metrics["delta_eval"])


@pytest.mark.slow
def test_a_tiny_defenses_ablation_feeds_the_comparison(tmp_path):
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    mid, tl = {"kind": "mid", "mid_beta": 0.1}, {"kind": "tl", "tl_trained_layers": 3, "tl_pretrain_epochs": 1}
    variants = {
        "none@poincare": {},
        "none@logit": {"attack.loss": "logit"},
        "ls@poincare": {"study.alphas": [0.0, -0.05]},
        "ls@logit": {"study.alphas": [0.0, -0.05], "attack.loss": "logit"},
        "mid@poincare": {"target.defense": mid},
        "mid@logit": {"target.defense": mid, "attack.loss": "logit"},
        "bido@poincare": {"target.defense": {"kind": "bido"}},
        "tl@poincare": {"target.defense": tl},
    }
    plan = ablation.AblationPlan(name="defenses", alphas=[0.0], seeds=[0, 1], variants=variants)
    result = ablation.run_ablation(cfg, plan, CPU, log=lambda line: None)
    cache = tmp_path / "out" / "ablations" / "cache"
    assert len(list((cache / "target").iterdir())) == 10  # none, ls, mid, bido, tl x 2 seeds: shared across losses
    assert len(list((cache / "attack").iterdir())) == 16  # 8 (model, loss) pairs x 2 seeds
    comparison, folder = compare.compare_defenses(result.out_dir / "results.json")
    assert set(comparison.fronts) == {"ls", "mid", "bido", "tl"}
    assert {p.strongest for p in comparison.points} <= {"base", "logit"}
    assert (folder / "fronts.png").exists() and (folder / "compare.md").exists()
    shutil.rmtree(cache)


def test_every_defense_kind_has_its_settings_and_its_spec() -> None:
    """A new defense: its module's SPEC, one line in the registry, its settings in config's union; they agree."""
    from typing import get_args

    from lsmia.config import DEFENSE_KINDS, DefenseConfig, SweepConfig, defense_settings
    from lsmia.defenses.registry import DEFENSES

    union = get_args(get_args(DefenseConfig)[0])
    kinds = [get_args(model.model_fields["kind"].annotation)[0] for model in union]
    assert kinds == list(DEFENSE_KINDS) == ["none", *DEFENSES]
    for kind in ("ls", *DEFENSE_KINDS):
        assert SweepConfig(defense=kind).defense == kind
    with pytest.raises(ValueError, match="name ls or one of none, mid, bido, tl"):
        SweepConfig(defense="dp")
    for kind, spec in DEFENSES.items():
        settings = defense_settings({"kind": kind})  # the references' defaults
        assert spec.kind == kind and spec.strength.format(**settings.model_dump())
        assert {param.name for param in spec.search} <= set(settings.model_dump())
        with pytest.raises(ValueError, match="Extra inputs"):  # another defense's setting is an error, not ignored
            defense_settings({"kind": kind, "mid_beta" if kind != "mid" else "tl_trained_layers": 1})


def test_a_setting_of_another_defense_is_a_one_line_error() -> None:
    with pytest.raises(LsmiaError, match=r"'target\.defense\.mid_beta' .* is not a setting of defense 'bido'"):
        load_config(ROOT / "params.yaml", {"target.defense.kind": "bido", "target.defense.mid_beta": 0.1})
