"""Cache keys of the stage graph: a stage of a cell is keyed by its params, its code (lsmia.experiments.code) and the
keys of the stages it reads, so a code edit invalidates exactly what it can change (lsmia ablate's cache, the
shared stages of lsmia.experiments.remote)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from lsmia.config import Config
from lsmia.experiments.code import code_digest
from lsmia.experiments.graph import BY_NAME, STAGES, Cell, Stage, upstream_of


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _param_values(cfg: Config, keys: Iterable[str]) -> dict[str, Any]:
    dump = cfg.to_dict()
    values = {}
    for key in keys:
        node: Any = dump
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def _key_params(stage_: Stage, cfg: Config, cell: Cell | None) -> dict[str, Any]:
    """The params that shape the stage's output; a target's smoothing enters as its per-epoch alpha, so
    alpha >= 0 models are shared across warm-up schedules that never apply to them."""
    if stage_.name == "attack":  # how the attack runs (shards, checkpoints) does not change what it computes
        from lsmia.attack.ppa import RUN_ONLY_KEYS

        values = _param_values(cfg, stage_.params)
        values["attack"] = {k: v for k, v in values["attack"].items() if k not in RUN_ONLY_KEYS}
        return values
    if stage_.name != "target":
        return _param_values(cfg, stage_.params)
    from lsmia.training.schedules import alpha_trajectory

    assert cell is not None
    target = {k: v for k, v in cfg.to_dict()["target"].items() if k != "smoothing"}
    smoothing = cfg.target.smoothing.model_copy(update={"alpha": cell.alpha})
    return {"target": target, "alpha_per_epoch": alpha_trajectory(smoothing, cfg.target.epochs)}


def code_digests() -> dict[str, str]:
    """Every stage's :func:`code_digest` now: a long run takes them once, at its start, and keys every cell with
    them, so an edit made while it runs neither splits its cells across two code versions nor files outputs of
    the code it has loaded under the edited code's key."""
    return {s.name: code_digest(s) for s in STAGES}


def stage_keys(
    cfg: Config,
    cell: Cell | None,
    code: Mapping[str, str] | None = None,
    names: Iterable[str] | None = None,
    salt: tuple[Any, ...] = (),
) -> dict[str, str]:
    """A cache key per stage of ``cell`` (every stage up to the evaluation; ``names``: only those, which must not
    read a per-cell stage when ``cell`` is None): its params, its code (``code``, from :func:`code_digests`, or
    read now), the keys of the stages it reads and ``salt`` (what else tells two outputs apart)."""
    wanted = set(upstream_of("evaluate") if names is None else names)
    keys: dict[str, str] = {}
    for s in STAGES:
        if s.name not in wanted or (not s.applies(cfg) and names is not None):
            continue
        upstream = [keys[need] for need in s.needs if need in keys and BY_NAME[need].applies(cfg)]
        seed = cell.seed if s.per_cell and cell is not None else None
        source = code[s.name] if code is not None else code_digest(s)
        keys[s.name] = digest(s.name, _key_params(s, cfg, cell if s.per_cell else None), source, upstream, seed, *salt)
    return keys
