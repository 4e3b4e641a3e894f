"""Every defense ``target.defense.kind`` can name, by kind: each module's ``SPEC`` (lsmia.defenses.base.DefenseSpec).

A new defense is its module (the :class:`~lsmia.defenses.base.Defense`, a ``build`` and a ``SPEC``), its settings in
lsmia.config's ``DefenseConfig`` union, and one line here; training (lsmia.defenses.factory), the sweep's search
space and the comparison's labels read it from here.
"""

from __future__ import annotations

from lsmia.defenses import bido, mid, tl
from lsmia.defenses.base import DefenseSpec

DEFENSES: dict[str, DefenseSpec] = {spec.kind: spec for spec in (mid.SPEC, bido.SPEC, tl.SPEC)}


def spec(kind: str) -> DefenseSpec:
    return DEFENSES[kind]
