"""Where the tests find the repository and the tiny study's parameters."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (the lsmia checkout)
TINY = ROOT / "tests" / "tiny_params.yaml"  # every key of params.yaml, shrunk so a whole study runs in seconds
