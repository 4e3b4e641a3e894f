"""The public images for the prior never reach the private data set the attack targets.

A prior trained on the private identities (test images included) voids the attack, so the public
folder may share no folder, file, identity name or picture with the private data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lsmia.errors import LsmiaError, printable

LEAK = "the prior would learn the private identities it attacks, test images included, and void the attack"


def require_separate_folders(private_root: Path, public_root: Path) -> None:
    """Neither folder is, or lies inside, the other (after resolving symbolic links)."""
    private, public = private_root.resolve(), public_root.resolve()
    if public == private:
        relation = "is the folder data.root"
    elif public.is_relative_to(private):
        relation = "lies inside data.root"
    elif private.is_relative_to(public):
        relation = "holds data.root"
    else:
        return
    raise LsmiaError(
        f"data.public_root {printable(public_root)} {relation} {printable(private_root)} (resolved: {printable(public)} "
        f"and {printable(private)}): {LEAK}: point data.public_root at a separate folder of public faces"
    )


def require_no_private_files(public_paths: list[Path], private_root: Path) -> None:
    """No public file is a symbolic link into the private data."""
    private = private_root.resolve()
    for path in public_paths:
        real = path.resolve()
        if real.is_relative_to(private):
            raise LsmiaError(
                f"public image {printable(path)} leads into data.root (to {printable(real)}): {LEAK}: "
                "remove that link from data.public_root"
            )


def identity_key(name: str) -> str | None:
    """``name`` compared case-blind; None for a plain number (CelebA's ids, FFHQ's 00000 folders), which names no one."""
    return None if name.isdigit() else name.casefold()


def require_no_shared_identities(private_names: list[str], public_paths: list[Path], public_root: Path) -> None:
    """No folder on a public image's path is named like a private identity (a copied identity folder)."""
    private = {identity_key(name): name for name in private_names}
    private.pop(None, None)
    for path in public_paths:
        for folder in path.relative_to(public_root).parts[:-1]:
            name = private.get(identity_key(folder))
            if name is not None:
                raise LsmiaError(
                    f"data.public_root holds the folder {printable(path.parent)}, named like the private identity "
                    f"'{printable(name)}' under data.root: {LEAK}: remove that identity from data.public_root "
                    "(or rename the folder if it is another person)"
                )


def picture_digest(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()


def require_no_shared_pictures(
    private_images: torch.Tensor, private_paths: list[Path], public_images: torch.Tensor, public_paths: list[Path]
) -> None:
    """No public image decodes to the same pixels as a private one (a copy or hard link of a private file)."""
    private = {picture_digest(image): path for image, path in zip(private_images, private_paths, strict=True)}
    for image, path in zip(public_images, public_paths, strict=True):
        twin = private.get(picture_digest(image))
        if twin is not None:
            raise LsmiaError(
                f"public image {printable(path)} is the same picture as the private image {printable(twin)}: "
                f"{LEAK}: remove it from data.public_root"
            )
