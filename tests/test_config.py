import pytest
import yaml

from lsmia.config import Config, build_config, load_config, parse_overrides
from lsmia.errors import LsmiaError
from tests.helpers.paths import ROOT


def test_params_yaml_mirrors_the_schema_defaults():
    # the committed params.yaml holds every default; the live one (a user's `dvc exp run -S ...` changes its
    # values) must still name every section and validate
    from tests.helpers.committed import committed_text

    params = yaml.safe_load(committed_text("params.yaml"))
    assert Config.model_validate(params).to_dict() == Config().to_dict()
    assert dotted_keys(params) == dotted_keys(Config().to_dict())  # every key written out, none left to a default
    assert set(params) == set(Config().to_dict())
    live = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(live) == set(Config().to_dict()) and Config.model_validate(live)


def dotted_keys(tree: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in tree.items():
        keys |= dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key}
    return keys


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("attack:\n  stepz: 3\n")
    with pytest.raises(LsmiaError, match=r"unknown config key 'attack.stepz'"):
        load_config(p)


def test_overrides_are_typed_and_validated():
    cfg = build_config({}, parse_overrides(["attack.steps=7", "study.alphas=[0.1, -0.2]", "run.device=cpu"]))
    assert cfg.attack.steps == 7 and cfg.study.alphas == [0.1, -0.2] and cfg.run.device == "cpu"
    with pytest.raises(LsmiaError, match=r"target.smoothing.alpha"):
        build_config({}, {"target.smoothing.alpha": 1.5})
    with pytest.raises(LsmiaError, match=r"target.smoothing.alpha"):
        build_config({}, {"target.smoothing.alpha": float("nan")})
    with pytest.raises(LsmiaError, match=r"section.key=value"):
        parse_overrides(["attack.steps"])


def test_missing_explicit_params_file_is_an_error(tmp_path):
    with pytest.raises(LsmiaError, match="does not exist"):
        load_config(tmp_path / "mine.yaml")


def test_invalid_yaml_is_a_one_line_error(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("attack: [unclosed\n")
    with pytest.raises(LsmiaError) as err:
        load_config(p)
    assert "\n" not in str(err.value)


def test_attack_sizes_are_consistent():
    with pytest.raises(LsmiaError, match="final_samples"):
        build_config({"attack": {"candidates": 4, "final_samples": 5}})
