"""The code of a stage: every lsmia source file its module reaches through imports (function-level imports and package
``__init__`` files included), found by reading the source, and the package-data folders those modules read.

``dvc.yaml`` lists them as each stage's code dependencies (lsmia.experiments.render), the ablation cache hashes them
into its keys (lsmia.experiments.keys), and a checkpoint records their hash so other code never resumes it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path
from typing import Protocol

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # lsmia/
REPO_ROOT = PACKAGE_ROOT.parent


class HasModule(Protocol):
    """A stage, as far as its code goes: the lsmia module whose import closure is its code."""

    @property
    def module(self) -> str: ...


def _module_file(module: str) -> Path | None:
    """The source file of an lsmia module or package, or None for a name that is not a module."""
    parts = module.split(".")
    if parts[0] != "lsmia":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every lsmia module ``path`` imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "lsmia")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "lsmia"
        ):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from lsmia import pipeline`
    return found


def _with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def code_files(module: str) -> tuple[Path, ...]:
    """The source files of ``module`` and of every lsmia module it reaches through imports, sorted."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        for name in _with_parents(pending.pop()):
            path = _module_file(name)
            if path is None or path in seen:
                continue
            seen.add(path)
            pending.extend(_imported_modules(path))
    return tuple(sorted(seen))


def _package_data(path: Path) -> tuple[str, ...]:
    """The folders under ``lsmia/`` that the module at ``path`` reads at run time: its top-level
    ``PACKAGE_DATA = ("templates/report", ...)`` (string literals), empty without one."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "PACKAGE_DATA" for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    return ()


@cache
def data_folders(module: str) -> tuple[Path, ...]:
    """The package-data folders of ``module`` and of every lsmia module it reaches through imports, sorted."""
    return tuple(sorted({PACKAGE_ROOT / folder for path in code_files(module) for folder in _package_data(path)}))


def code_deps(stage_: HasModule) -> list[str]:
    """The stage's code files and package-data folders relative to the repository, as DVC lists them (a folder
    as one dependency, so a template added to it re-runs the stage too)."""
    found = sorted([*code_files(stage_.module), *data_folders(stage_.module)])
    return [path.relative_to(REPO_ROOT).as_posix() for path in found]


def code_digest(stage_: HasModule) -> str:
    """A hash of the stage's code files, for cache keys: of their syntax trees without comments and docstrings,
    so an edit of the prose around the code keeps hours of cached models while any edit of the code drops them;
    and of every file in its package-data folders, byte for byte."""
    digest = hashlib.sha256()
    for path in code_files(stage_.module):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(_code_only(path.read_bytes()).encode())
    for folder in data_folders(stage_.module):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _code_only(source: bytes) -> str:
    """The module's syntax tree, docstrings removed, as text (comments never reach the tree)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)
