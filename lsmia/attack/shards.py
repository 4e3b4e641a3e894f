"""Attacks sharded by class: which classes a shard runs, and the merge of shard results into one attack.

A shard (``run_attack(..., classes=...)``) computes exactly what an attack on all ``attack.targets`` computes
for its classes: it draws every random number of the whole attack (cheap CPU draws for the batches and chunks
it skips) and runs every batch that holds one of its rows at its full shape, so :func:`merge_shards` of shards
covering the targets is bit-identical to one unsharded run with the same seed, for any split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lsmia.attack.batches import StepDiagnostics, row_batches
from lsmia.attack.result import AttackResult
from lsmia.errors import LsmiaError

_TOKEN = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_classes(spec: str, limit: int | None = None) -> list[int]:
    """``"0-9,20,30-39"`` -> the listed classes (ranges inclusive), in the order given; a LsmiaError when malformed,
    when a class repeats, or when a class is ``limit`` or more (checked before a range is expanded)."""
    classes: list[int] = []
    seen: set[int] = set()
    for token in (t.strip() for t in spec.split(",")):
        match = _TOKEN.match(token)
        if match is None:
            raise LsmiaError(
                f"--classes {spec!r}: {token!r} is not a class or a range: write e.g. --classes 0-9,20,30-39"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise LsmiaError(f"--classes {spec!r}: range {token} runs backwards: write it as {high}-{low}")
        if limit is not None and high >= limit:
            raise LsmiaError(
                f"--classes {spec!r}: class {high} is beyond the attack's classes (attack.targets reaches class "
                f"{limit - 1}): list classes from 0 to {limit - 1}"
            )
        for c in range(low, high + 1):
            if c in seen:
                raise LsmiaError(f"--classes {spec!r} lists class {c} more than once: list each class once")
            seen.add(c)
            classes.append(c)
    return classes


def class_limit(spec: list[int] | int) -> int:
    """One more than the largest class ``attack.targets`` names (an int N: the first N classes)."""
    if isinstance(spec, int):
        return spec
    return max(spec, default=-1) + 1


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    match = re.match(r"^(\d+)/(\d+)$", spec.strip())
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise LsmiaError(f"--shard {spec!r} is not I/N with 0 <= I < N: write e.g. --shard 0/4")
    return int(match[1]), int(match[2])


def target_list(spec: list[int] | int) -> list[int]:
    """``attack.targets`` as a list (an int N: the first N classes); checked against the model in the attack."""
    return list(range(spec)) if isinstance(spec, int) else list(spec)


def shard_classes(targets: Sequence[int], index: int, count: int) -> list[int]:
    """Shard ``index`` of ``count`` near-equal consecutive parts of ``targets`` (sizes differ by at most one)."""
    if count > len(targets):
        raise LsmiaError(
            f"attack.shards is {count} but the attack has only {len(targets)} target classes: "
            f"set attack.shards to at most {len(targets)}"
        )
    size, extra = divmod(len(targets), count)
    begin = index * size + min(index, extra)
    return list(targets[begin : begin + size + (index < extra)])


def compact(classes: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (a folder name for a shard)."""
    runs: list[list[int]] = []
    for c in classes:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def shard_dir(attack_dir: Path, index: int) -> Path:
    """Where shard ``index`` of the attack written to ``attack_dir`` lies: ``<..>/attack-shards/<cell>/<index>``
    (beside, not inside, the merged attack: DVC outputs must not overlap)."""
    return attack_dir.parent.parent / "attack-shards" / attack_dir.name / str(index)


SHARD_KEYS = ("targets", "classes", "batches", "diagnostics")  # what every shard's meta["shard"] holds
INPUTS = {"target": "target model", "prior": "prior", "config": "attack or prior config"}  # meta["shard"]["digests"]


def _shard_meta(part: AttackResult, where: str) -> dict[str, Any]:
    shard = part.meta.get("shard")
    if not isinstance(shard, dict):
        raise LsmiaError(f"{where} is not an attack shard (a merged or unsharded attack): pass shard outputs only")
    missing = [key for key in SHARD_KEYS if key not in shard]
    if missing or not isinstance(part.meta.get("config"), dict):
        lacking = f"meta['shard']['{missing[0]}']" if missing else "meta['config']"
        raise LsmiaError(f"{where} is not a complete attack shard (it has no {lacking}): re-run that attack shard")
    return shard


def _same(parts: Sequence[AttackResult], names: Sequence[str]) -> None:
    for key in ("config", "schedule", "pool_size", "latent", "lr_effective"):
        values = [p.meta.get(key) for p in parts]
        for value, name in zip(values[1:], names[1:], strict=True):
            if value != values[0]:
                raise LsmiaError(
                    f"{name} was attacked with another {key} than {names[0]}: merge shards of one attack only"
                )
    targets = [_shard_meta(p, n)["targets"] for p, n in zip(parts, names, strict=True)]
    for value, name in zip(targets[1:], names[1:], strict=True):
        if value != targets[0]:
            raise LsmiaError(f"{name} is a shard of an attack on other targets than {names[0]}: merge one attack only")
    _same_inputs(parts, names)


def _same_inputs(parts: Sequence[AttackResult], names: Sequence[str]) -> None:
    """The shards that carry digests attacked the same target model with the same prior and config
    (:func:`undigested` names those that carry none)."""
    checked = [(n, p.meta["shard"]["digests"]) for p, n in zip(parts, names, strict=True) if has_digests(p)]
    for name, digest in checked[1:]:
        first_name, first = checked[0]
        for key, what in INPUTS.items():
            if digest.get(key) != first.get(key):
                raise LsmiaError(
                    f"{name} and {first_name} attacked a different {what} (digest {digest.get(key)} vs "
                    f"{first.get(key)}): merge shards of one attack only, or re-run the stale shard"
                )


def has_digests(part: AttackResult) -> bool:
    shard = part.meta.get("shard")
    return isinstance(shard, dict) and isinstance(shard.get("digests"), dict)


def undigested(parts: Sequence[AttackResult], names: Sequence[str]) -> list[str]:
    """The shards written before shards carried the digests of their inputs: a merge cannot compare those."""
    return [name for part, name in zip(parts, names, strict=True) if not has_digests(part)]


def merge_shards(parts: Sequence[AttackResult], names: Sequence[str] | None = None) -> AttackResult:
    """One attack from shards covering every target exactly once (bit-identical to the unsharded run)."""
    names = list(names or [f"shard {i}" for i in range(len(parts))])
    if not parts:
        raise LsmiaError("no shard to merge: pass the shard folders")
    _same(parts, names)
    metas = [_shard_meta(p, n) for p, n in zip(parts, names, strict=True)]
    targets: list[int] = list(metas[0]["targets"])
    owner: dict[int, int] = {}
    for index, meta in enumerate(metas):
        for c in meta["classes"]:
            if c in owner:
                raise LsmiaError(f"class {c} is in {names[owner[c]]} and {names[index]}: merge disjoint shards")
            owner[c] = index
    missing = [c for c in targets if c not in owner]
    if missing:
        raise LsmiaError(
            f"no shard holds class {missing[0]} ({len(missing)} of {len(targets)} classes missing): "
            f"run lsmia attack --classes {compact(missing)} and merge it too"
        )
    cfg = parts[0].meta["config"]
    candidates, keep = int(cfg["candidates"]), int(cfg["final_samples"])

    position = [{c: i for i, c in enumerate(part.targets)} for part in parts]

    def gather(field: str, per_class: int) -> torch.Tensor:
        """The field's rows of every target in order, each from the shard holding it."""
        pieces = []
        for c in targets:
            part = parts[owner[c]]
            values = metas[owner[c]][field] if field in metas[owner[c]] else getattr(part, field)
            at = position[owner[c]][c]
            pieces.append(values[at * per_class : (at + 1) * per_class])
        return torch.cat(pieces)

    meta = {k: v for k, v in parts[0].meta.items() if k not in ("shard", "timings")}
    timings: dict[str, float] = {}
    for part in parts:
        for key, value in part.meta.get("timings", {}).items():
            timings[key] = timings.get(key, 0.0) + value
    result = AttackResult(
        targets=targets,
        all_latents=gather("all_latents", candidates),
        all_images=gather("all_images", candidates),
        all_targets=gather("all_targets", candidates),
        final_latents=gather("final_latents", keep),
        final_images=gather("final_images", keep),
        final_targets=gather("final_targets", keep),
        final_scores=gather("final_scores", keep),
        meta={"timings": timings, **meta, "num_latents": len(targets) * candidates, "num_final": len(targets) * keep},
    )
    if all(m["diagnostics"] is not None for m in metas):
        batches = row_batches(len(targets), candidates, int(cfg["batch_size"]), meta["schedule"])
        recorder = StepDiagnostics(batches, int(cfg["steps"]))
        done = torch.zeros(len(batches), dtype=torch.bool)
        for m in metas:
            recorder.sums[m["batches"]] = m["diagnostics"]
            done[m["batches"]] = True
        assert bool(done.all()), "shards covering every class ran every batch"
        raw = gather("final_confidence_raw", keep)
        result.meta.update(
            diagnostics=recorder.curves(),
            final_target_confidence_raw=round(float(raw.double().sum()) / max(1, len(raw)), 6),
        )
        if all(m.get("final_accepted_raw") is not None for m in metas):
            accepted = gather("final_accepted_raw", keep)
            result.meta["final_target_acceptance_raw"] = round(float(accepted.double().mean()), 6)
    if all(m.get("reach") is not None for m in metas):
        result.meta["until_accept"] = reach_summary(metas, len(targets), cfg, meta["schedule"])
    return result


def reach_summary(
    metas: Sequence[dict[str, Any]], num_targets: int, cfg: dict[str, Any], schedule: Any
) -> dict[str, float]:
    """How far the unbounded check got: the mean steps per row and the fraction of rows the target accepted."""
    batches = row_batches(num_targets, int(cfg["candidates"]), int(cfg["batch_size"]), schedule)
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    reach = torch.zeros(len(batches), 2, dtype=torch.float64)
    for meta in metas:
        reach[meta["batches"]] = meta["reach"]
    return {
        "goal": float(cfg["until_accept"]),
        "mean_steps": round(float((reach[:, 0] * sizes).sum() / sizes.sum()), 3),
        "max_steps": int(reach[:, 0].max()),
        "accepted": round(float((reach[:, 1] * sizes).sum() / sizes.sum()), 6),
    }


def load_shards(dirs: Sequence[Path]) -> list[AttackResult]:
    return [AttackResult.load(Path(d) / "attack.pt") for d in dirs]
