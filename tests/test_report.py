"""The HTML study report: figures, tables with the right means and intervals, atomic replacement, errors."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest
import torch

from lsmia.errors import LsmiaError
from lsmia.models.classifiers import build_classifier, save_classifier
from lsmia.paths import StudyPaths
from lsmia.reporting import formatting, report
from lsmia.reporting.stats import mean_ci
from lsmia.utils import save_json
from tests.helpers.data import make_face_data
from tests.helpers.defenses import hand_made_results
from tests.helpers.paths import ROOT
from tests.helpers.study import ALPHAS, SEEDS, fake_attack, fake_metrics, make_study

T_975_DF1 = 12.706204736174698  # Student t quantile 0.975, 1 degree of freedom (tables)
T_975_DF2 = 4.302652729749464


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[StudyPaths, Path]:
    paths = make_study(tmp_path_factory.mktemp("study") / "out")
    index = report.write_report(paths, paths.report_dir, torch.device("cpu"), title="test study")
    return paths, index


def test_every_figure_is_written_linked_and_embedded(built):
    paths, index = built
    page = index.read_text()
    names = {p.name for p in index.parent.glob("*.png")}
    expected = {"accuracy.png", "leakage.png", "tradeoff.png", "distributions.png"} | {
        f"reconstructions_alpha{a:g}_seed{s}.png" for a in ALPHAS for s in SEEDS
    }
    assert names == expected
    for name in names:
        png = (index.parent / name).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert f"href='{name}'" in page
        assert "data:image/png;base64," + base64.b64encode(png).decode() in page
    copied = (index.parent / "reconstructions_alpha0.1_seed1.png").read_bytes()
    assert copied == (paths.attack_dir(0.1, 1) / "reconstructions.png").read_bytes()
    assert page.count("left: real training images, right: reconstructions") == len(ALPHAS)
    assert "test study" in page and "<td>4</td>" in page  # title, number of classes from summary.json


def test_summary_table_has_hand_computed_mean_and_interval(built):
    _, index = built
    v0, v1 = (fake_metrics(0.1, s)["test_acc"] for s in SEEDS)
    mean, half_width = (v0 + v1) / 2, T_975_DF1 * abs(v0 - v1) / 2  # sem of two values = |v0 - v1| / 2
    assert formatting.mean_ci(mean, half_width) in index.read_text()
    summary = {s["alpha"]: s for s in report.aggregate(report.collect_metrics(built[0].metrics_dir))}
    stat = summary[0.1]["metrics"]["test_acc"]
    assert stat["mean"] == pytest.approx(mean) and stat["ci95"] == pytest.approx(half_width) and stat["n"] == 2
    assert summary[0.1]["seeds"] == [0, 1]


def test_mean_ci_of_three_values_and_single_value():
    mean, half_width, n = mean_ci([1.0, 2.0, 3.0, math.nan])
    assert (mean, n) == (2.0, 3) and half_width == pytest.approx(T_975_DF2 / math.sqrt(3))
    mean, half_width, n = mean_ci([0.25])
    assert (mean, n) == (0.25, 1) and math.isnan(half_width)


def test_mean_and_interval_are_rounded_to_the_interval_precision():
    assert formatting.mean_ci(0.83481, 0.036312) == "0.835 ± 0.036"
    assert formatting.mean_ci(41.234, 4.597) == "41.2 ± 4.6"
    assert formatting.mean_ci(123.4, 45.6) == "123 ± 46"
    assert formatting.mean_ci(0.99, 0.0) == "0.99 ± 0"
    assert formatting.mean_ci(0.25, math.nan) == "0.25"
    assert mean_ci([0.99, 0.99, 0.99])[1] == 0.0  # not 3e-16 of rounding noise


def test_raw_table_lists_every_run(built):
    page = built[1].read_text()
    raw = page[page.index("<h2>Raw metrics per run") :]
    assert len(re.findall(r"<th>α = [-0-9.]+<br><small>seed \d</small></th>", raw)) == len(ALPHAS) * len(SEEDS)
    assert len(re.findall(r"<tr><th title='[^']*'>[a-z_0-9]+</th>", raw)) == len(fake_metrics(0.0, 0)) - 2
    assert f"<td>{fake_metrics(-0.05, 1)['delta_eval']:.4g}</td>" in raw


def test_confidence_and_logit_norm_per_alpha(built):
    paths, _ = built
    outputs = report.private_test_outputs(paths, report.collect_metrics(paths.metrics_dir), torch.device("cpu"))
    n_test = len(make_face_data().test)
    assert list(outputs) == list(ALPHAS)
    for values in outputs.values():
        assert values["confidence"].shape == values["logit_norm"].shape == (len(SEEDS) * n_test,)
        assert ((values["confidence"] >= 0.25 - 1e-6) & (values["confidence"] <= 1.0)).all()
    # head weights scaled by (1 - 5 alpha) with the same seeds: logit norms shrink as alpha grows
    norms = [outputs[a]["logit_norm"].mean() for a in ALPHAS]
    assert norms[0] > norms[1] > norms[2]


def test_missing_attribute_keys_and_files_are_tolerated(tmp_path):
    paths = make_study(tmp_path / "out", attributes=False)
    row = fake_metrics(0.0, 0, attributes=False)
    save_json({**row, "attribute_acc": 0.75}, paths.metrics_file(0.0, 0))  # one seed of one alpha only
    (paths.attack_dir(0.1, 1) / "reconstructions.png").unlink()
    summary = {s["alpha"]: s for s in report.aggregate(report.collect_metrics(paths.metrics_dir))}
    assert "attribute_acc" not in summary[0.1]["metrics"]
    assert summary[0.0]["metrics"]["attribute_acc"] == {
        "mean": 0.75,
        "ci95": pytest.approx(math.nan, nan_ok=True),
        "n": 1,
    }
    page = report.write_report(paths, tmp_path / "report", torch.device("cpu")).read_text()
    assert "0.75 <small>(n = 1)</small>" in page and "n/a" in page
    assert "no reconstruction grid for: alpha 0.1, seed 1" in page
    assert "attribute_chance" not in page


def test_empty_or_missing_metrics_dir_is_a_one_line_error(tmp_path):
    paths = StudyPaths(tmp_path / "out")
    with pytest.raises(LsmiaError, match=r"no metrics files in .*metrics: run 'lsmia evaluate' \(or dvc repro\) first"):
        report.write_report(paths, tmp_path / "report", torch.device("cpu"))
    paths.metrics_dir.mkdir(parents=True)
    with pytest.raises(LsmiaError, match="no metrics files"):
        report.collect_metrics(paths.metrics_dir)
    assert not (tmp_path / "report").exists()


def test_metrics_file_without_alpha_is_an_error(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"test_acc": 0.5}))
    with pytest.raises(LsmiaError, match="no numeric alpha and seed"):
        report.collect_metrics(tmp_path)


def test_failed_rebuild_keeps_the_previous_report(tmp_path, monkeypatch):
    paths = make_study(tmp_path / "out")
    index = report.write_report(paths, tmp_path / "report", torch.device("cpu"))
    before = index.read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(report, "plot_leakage", broken)
    with pytest.raises(RuntimeError):
        report.write_report(paths, tmp_path / "report", torch.device("cpu"), title="never written")
    assert index.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "report"]  # no staging folders left
    monkeypatch.undo()
    report.write_report(paths, tmp_path / "report", torch.device("cpu"), title="rebuilt")
    assert "rebuilt" in index.read_text()


def test_effect_table_pairs_each_seed_with_hard_labels(built):
    _, index = built
    section = index.read_text().split("<h2>The paper&#39;s effect, paired by seed", 1)[1].split("<h2>", 1)[0]
    # fake_metrics: acc@1 = 0.6 + 2 alpha - 0.1 seed, so the paired gain at alpha = 0.1 is exactly +0.2 per seed
    assert "α = 0.1</th><td>0.2 ± 0 <small>(n = 2)</small>" in section
    assert "raises acc@1 (interval above 0)" in section
    # at alpha = -0.05 the ratios are 0.5/0.6 and 0.4/0.5 (mean 0.8167) and accuracy rises by 0.05 (cost -0.05)
    assert "does not halve acc@1" in section and "0.82 ± 0.21" in section and "-0.05 ± 0" in section


def test_ablation_results_are_html_tables_from_results_json(tmp_path):
    paths = make_study(tmp_path / "out")
    results = paths.ablation_dir("alpha") / "results.md"
    results.parent.mkdir(parents=True)
    results.write_text("| raw markdown, never shown |\n")
    committed = ROOT / "out" / "ablations" / "alpha" / "results.json"
    results.with_name("results.json").write_text(committed.read_text())
    orphan = paths.ablation_dir("factors") / "results.md"  # a results.md without its results.json
    orphan.parent.mkdir(parents=True)
    orphan.write_text("| variant |\n")
    page = report.write_report(
        paths, tmp_path / "report", torch.device("cpu"), ablation_files=[results, orphan]
    ).read_text()
    section = page[page.index("<h2>Measured ablations") : page.index("<h2>The paper&#39;s 2-D toy")]
    assert "<pre>" not in section and "raw markdown" not in section and "|" not in section
    # the paired effect at -0.05 and the summary row at 0, as in the committed results.md
    assert (
        "<tr><th>baseline</th><td>-0.05</td><td>0.537 ± 0.031</td><td>0.554 ± 0.065</td><td>0.97 ± 0.06</td>"
        "<td>0.003 ± 0.007</td><td>does not halve acc@1</td></tr>"
    ) in section
    assert "<tr><th>baseline</th><td>+0</td><td>0.857 ± 0.052</td><td>0.554 ± 0.065</td><td></td>" in section
    assert section.count("<table") == 3 and section.count("<div class='scroll'>") == 3  # claims, effects, summary
    # the claims across the included ablations: of the three negative alphas, -0.2 comes closest to halving
    assert (
        "<tr><th>α &lt; 0 keeps at most half of acc@1 at ≤ 5 points of test accuracy (≥ 3 seeds, interval below "
        "1)</th><td>3</td><td>none</td>"
        "<td>alpha/baseline α = -0.2</td><td>ratio 0.81 ± 0.14, cost 0.018 ± 0.052</td></tr>"
    ) in section
    assert "Seeds [0, 1, 2]" in section and "<b>baseline</b>: the default settings" in section
    assert "no " in section and "results.json beside results.md" in section  # the orphan is named, not shown raw
    assert report.ablation_html(results.with_name("results.json")) == report.ablation_html(results)  # either file


def test_the_verdict_opens_the_report_with_both_attackers_and_the_acceptance_gap(tmp_path):
    from lsmia.reporting import verdict
    from tests.test_verdict import results as verdict_results

    source = tmp_path / "adaptive" / "results.json"
    source.parent.mkdir()
    source.write_text(json.dumps(verdict_results()))
    folder = tmp_path / "report"
    folder.mkdir()
    assert report.verdict_html([source], folder) == ""  # no verdict.json yet: no section
    verdict.write(verdict.build([source]), source.parent, [source])
    section = report.verdict_html([source], folder)
    assert section.startswith(f"<h2>{report.VERDICT_HEADING}</h2>")
    assert "<a href='verdict_adaptive.png'><img src='data:image/png;base64," in section  # the forest plot first
    assert (folder / "verdict_adaptive.png").read_bytes() == (source.parent / "verdict.png").read_bytes()
    for head in ("acc@1 published", "acc@1 adaptive", "target acceptance published / adaptive", "ratio worst case"):
        assert f"<th>{head}</th>" in section
    assert "<td>0.20 ± 0.00 / 0.90 ± 0.00</td>" in section  # the target believes the adaptive attack, not PPA's
    assert "no shield: only the published attack is lowered" in section and "negative control" in section


def test_a_partial_ablation_names_its_unfinished_cells(tmp_path):
    """``lsmia ablate --finished-only`` records the cells it left out: the report says which, beside the tables."""
    committed = json.loads((ROOT / "out/ablations/alpha/results.json").read_text())
    committed["missing"] = [{"variant": "baseline", "alpha": -0.1, "seed": 2}]
    results = tmp_path / "alpha" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps(committed))
    assert "Not finished yet (1 cells, left out above): baseline α=-0.1 seed 2." in report.ablation_html(results)
    del committed["missing"]  # results of a full run
    results.write_text(json.dumps(committed))
    assert "Not finished" not in report.ablation_html(results)


def defenses_section(page: str) -> str:
    return page[page.index("<h2>Defenses at equal accuracy</h2>") : page.index("<h2>The paper&#39;s 2-D toy")]


def test_defenses_section_says_how_to_produce_it_when_absent(built):
    paths, index = built
    section = defenses_section(index.read_text())
    expected = paths.ablation_dir("defenses") / "compare.json"
    assert f"no defense comparison at {expected}" in section
    assert "run &#39;lsmia ablate configs/defenses.yaml&#39;" in section
    assert "&#39;lsmia compare-defenses out/ablations/defenses/results.json&#39;" in section
    assert "<table" not in section and "<img" not in section


def test_defenses_section_from_an_ablation_s_results_json_and_from_compare_json(tmp_path):
    paths = make_study(tmp_path / "out")
    folder = paths.ablation_dir("defenses")
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(hand_made_results()))
    # results.json alone: the report computes the comparison and draws the fronts itself
    page = report.write_report(paths, tmp_path / "report", torch.device("cpu")).read_text()
    section = defenses_section(page)
    figure = (tmp_path / "report" / "defenses_fronts.png").read_bytes()
    assert "data:image/png;base64," + base64.b64encode(figure).decode() in section
    assert "<tr><th>0.700</th><td>ls</td><td>0.300 ± 0.000</td>" in section  # the hand-computed worst case
    assert "at test accuracy 0.700: ls has the lowest attack acc@1 (next: mid; 95 % intervals overlap)" in section
    assert section.count("<tr><th>0.") == 12  # 6 levels x 2 defenses
    # a hand-made compare.json (no results.json, no fronts.png beside it): its table, the figure named as missing
    record = {
        "levels": [0.75],
        "table": [
            {
                "test_acc": 0.75,
                "defense": "bido",
                "final_acc1": {"mean": 0.25, "ci95": 0.05, "n": 3},
                "delta_eval": {"mean": 120.0, "ci95": float("nan"), "n": 1},
                "xi": {"mean": 0.4, "ci95": 0.1, "n": 3},
                "model": "λx=0.05, λy=0.5",
                "strongest": "logit",
            }
        ],
        "winners": [],
    }
    alone = tmp_path / "elsewhere" / "compare.json"
    alone.parent.mkdir()
    alone.write_text(json.dumps(record))
    html_part = report.defenses_html(alone, tmp_path)
    assert (
        "<tr><th>0.750</th><td>bido</td><td>0.250 ± 0.050</td><td>120.0</td><td>0.400 ± 0.100</td><td>logit</td>"
        "<td>λx=0.05, λy=0.5</td></tr>"
    ) in html_part
    assert f"no fronts.png beside {alone}" in html_part
    # compare.json of lsmia compare-defenses with its fronts.png: that figure, byte for byte
    compare_defenses = report.defense_comparison.compare_defenses
    compare_defenses(folder / "results.json")
    page = report.write_report(
        paths, tmp_path / "report", torch.device("cpu"), defenses_file=folder / "compare.json"
    ).read_text()
    assert (tmp_path / "report" / "defenses_fronts.png").read_bytes() == (folder / "fronts.png").read_bytes()
    assert f"From {folder / 'compare.json'}" in defenses_section(page)
    (folder / "compare.json").write_text("[1, 2]")
    with pytest.raises(LsmiaError, match=r"is not the compare\.json of 'lsmia compare-defenses'"):
        report.defenses_html(folder / "compare.json", tmp_path)


def test_reconstructions_in_report_and_plots_are_judged_by_the_evaluation_model(tmp_path):
    from lsmia.data.base import FaceData
    from lsmia.models.inference import predict_logits
    from lsmia.reporting.visualize import save_judged_grid

    paths = make_study(tmp_path / "out")
    torch.manual_seed(0)
    eval_model = build_classifier("smallvgg", 4, 16, width=4).eval()
    save_classifier(eval_model, paths.eval_dir / "model.pt")
    result = fake_attack([1, 3])
    result.final_images = torch.randint(0, 256, result.final_images.shape, dtype=torch.uint8)
    for alpha in ALPHAS:
        for seed in SEEDS:
            result.save(paths.attack_dir(alpha, seed) / "attack.pt")
    index = report.write_report(paths, tmp_path / "report", torch.device("cpu"))
    report.write_plot_data(paths, tmp_path / "plots")
    correct = predict_logits(eval_model, result.final_images).argmax(1) == result.final_targets
    save_judged_grid(FaceData.load(paths.data_file), result, correct, tmp_path / "expected.png")
    expected = (tmp_path / "expected.png").read_bytes()
    assert (index.parent / "reconstructions_alpha0.1_seed1.png").read_bytes() == expected
    assert (tmp_path / "plots" / "reconstructions" / "alpha0.1_seed1.png").read_bytes() == expected
    assert "green frame" in index.read_text()


def test_the_report_has_contents_provenance_and_says_a_smoke_run_is_one(built):
    page = built[1].read_text()
    toc = page[page.index("<nav class='toc'>") : page.index("</nav>")]
    headings = re.findall(r"<a id='(s\d+)'></a><h2>(.*?)</h2>", page)
    assert len(headings) >= 8 and all(f"<a href='#{i}'>{text}</a>" in toc for i, text in headings)
    assert page.index("</nav>") < page.index("<a id='s1'></a>")  # the contents come before the first section
    provenance = re.search(r"Built (\d{4}-\d\d-\d\d \d\d:\d\d UTC) from commit ([0-9a-f]{7,}|unknown)", page)
    assert provenance is not None and "params.yaml sha256" in page and "CPUs, torch" in page
    assert "This study is a smoke-scale run" in page  # two seeds: not the paper's regime


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_sizes_come_from_the_header(tmp_path: Path, suffix: str) -> None:
    from PIL import Image

    from lsmia.reporting.report import png_size

    path = tmp_path / f"grid{suffix}"
    Image.new("RGB", (37, 21)).save(path)
    assert png_size(path) == (37, 21)


def test_names_from_the_study_and_its_ablations_are_escaped(tmp_path: Path) -> None:
    """A title, data source, plan or variant name and an override value are text: markup in one shows as text."""
    paths = make_study(tmp_path / "out")
    summary = json.loads(paths.data_summary.read_text())
    save_json({**summary, "source": "<script>alert('source')</script>"}, paths.data_summary)
    record = json.loads((ROOT / "out/ablations/alpha/results.json").read_text())
    variant = {**record["variants"]["baseline"], "overrides": {"attack.loss": "<b>bold</b> & more"}}
    record["variants"]["<script>alert('variant')</script>"] = variant
    results = tmp_path / "ablations" / "<img src=x onerror=alert(1)>" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(record))
    title = "<script>alert('title')</script>"
    page = report.write_report(
        paths, tmp_path / "report", torch.device("cpu"), title=title, ablation_files=[results]
    ).read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>bold</b>" not in page
    for name in ("title", "source", "variant"):
        assert f"&lt;script&gt;alert(&#39;{name}&#39;)&lt;/script&gt;" in page
    assert "<title>&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;</title>" in page
    assert "<h3>&lt;img src=x onerror=alert(1)&gt;</h3>" in page
    assert "attack.loss = &lt;b&gt;bold&lt;/b&gt; &amp; more" in page


def test_templates_escape_text_keep_markup_and_refuse_missing_values() -> None:
    import jinja2
    from markupsafe import Markup

    section = report.Section(Markup("<p>a figure</p>"), heading="α < 0 & more")
    assert report.macro("section", section).strip() == "<h2>α &lt; 0 &amp; more</h2>\n<p>a figure</p>"
    with pytest.raises(jinja2.UndefinedError, match="'verdicts' is undefined"):
        report.render("verdict.html.j2", note="a note")  # an error, not an empty table


def test_every_template_is_package_data() -> None:
    """setuptools puts into a wheel only the data files that pyproject's package data names."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lsmia"]
    folder = ROOT / "lsmia" / report.PACKAGE_DATA[0]
    files = sorted(p.relative_to(ROOT / "lsmia").as_posix() for p in folder.rglob("*") if p.is_file())
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files)
    assert sorted(report.templates().list_templates()) == sorted(Path(f).name for f in files)


def test_source_date_epoch_fixes_the_build_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from lsmia.reporting.report import provenance

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796601600")
    assert provenance().built == "2026-12-07 00:00 UTC"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "not a time")
    assert provenance().built.endswith(" UTC") and provenance().built != "2026-12-07 00:00 UTC"
