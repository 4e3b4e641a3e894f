"""Real face data from disk: FaceScrub, CelebA and any class-per-folder image tree.

Every image is decoded with PIL to RGB, its shorter side resized to ``image_size``
(bilinear, antialiased) and then center-cropped to a square, and stored as uint8.
Unreadable or corrupt files are skipped and reported in one warning per root. Every file read
resolves inside its root (no symbolic link leads out), and the public images for the prior share
no folder, file, identity name or picture with the private data.
"""

from __future__ import annotations

import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from lsmia.config import DataConfig
from lsmia.data.base import FaceData, ImageSet, require_printable_names, require_study_classes, split_indices
from lsmia.data.separation import (
    require_no_private_files,
    require_no_shared_identities,
    require_no_shared_pictures,
    require_separate_folders,
)
from lsmia.errors import LsmiaError, printable
from lsmia.utils import progress, require_memory

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESIZE_POLICY = "shorter-side+center-crop"
FACESCRUB_GROUPS = ("actors", "actresses")
MIN_IMAGES_PER_IDENTITY = 2  # one train and one test image
MIN_PIXEL_CAP = 64_000_000  # decoded as RGB(X), 256 MB per decoding thread
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale (PNG), 0..65535
# HD-CelebA-Cropper's output folder (its align.py:76) at PPA's settings: 224 px, face factor 0.65, default move
HD_CROP_FOLDER = "align_size(224,224)_move(0.250,0.000)_face_factor(0.650)_{}"
HD_CROP_FORMATS = ("jpg", "png")
CELEBA_ID_DIGITS = 18  # far above CelebA's 10,177 ids; int() of thousands of digits is refused by Python


@dataclass
class LabelledFiles:
    """Image paths with their class index, before decoding."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]


# --------------------------------------------------------------------------- decoding


def max_source_pixels(image_size: int) -> int:
    """The most pixels an image may hold once JPEG draft mode has shrunk it.

    Past 8 times the data set's side in each direction a resize keeps nothing more, so the cap only rises
    above 64 megapixels for a data.image_size over 1000.
    """
    return max(MIN_PIXEL_CAP, (8 * image_size) ** 2)


def oversized(path: Path, pixels: str, image_size: int) -> LsmiaError:
    cap = max_source_pixels(image_size) / 1e6
    return LsmiaError(
        f"image {printable(path)} holds {pixels}; data.image_size={image_size} reads at most {cap:.0f} million "
        "pixels per image (decoding more takes gigabytes of memory): downscale that file or remove it"
    )


def require_decodable_size(path: Path, size: tuple[int, int], image_size: int) -> None:
    """Refuse from the header alone an image whose decoding would take gigabytes (a small PNG can)."""
    width, height = size
    if width * height > max_source_pixels(image_size):
        raise oversized(path, f"{width}x{height} = {width * height / 1e6:.0f} million pixels", image_size)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode; 16-bit grey scaled to 8 bits (``convert`` clips it, turning the image white)."""
    if img.mode in WIDE_GREY_MODES:
        grey = np.clip(np.asarray(img), 0, 65535) / 257.0
        img = Image.fromarray(np.rint(grey).astype(np.uint8))
    return img.convert("RGB")


def decode_image(path: Path, image_size: int) -> torch.Tensor | None:
    """One image as uint8 [3, S, S]: shorter side resized to S, then center-cropped; None if unreadable.

    Raises LsmiaError naming a file with more pixels than ``max_source_pixels`` allows.
    """
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale still >= S
            require_decodable_size(path, opened.size, image_size)
            img = to_rgb(opened)
            width, height = img.size
            scale = image_size / min(width, height)
            new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
            array = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise oversized(
            path, f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} million pixels", image_size
        ) from None
    except (OSError, ValueError, SyntaxError):
        return None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_images(
    paths: list[Path], image_size: int, root: Path, workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``paths`` in a thread pool (PIL releases the GIL).

    Returns uint8 images [K, 3, S, S] of the readable files and the indices (into ``paths``)
    of those files. Skipped files are reported in one warning naming ``root`` and an example.
    """
    require_memory(
        len(paths) * 3 * image_size**2,
        f"data.image_size={image_size} for {len(paths)} images",
        "lower data.image_size or use fewer images",
    )
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    readable = torch.zeros(len(paths), dtype=torch.bool)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        decoded = pool.map(lambda p: decode_image(p, image_size), paths)
        for i, image in enumerate(progress(decoded, total=len(paths), desc=f"decoding {root}")):
            if image is not None:
                images[i] = image
                readable[i] = True
    finally:
        pool.shutdown(cancel_futures=True)  # an oversized image ends the run without decoding the rest
    skipped = [paths[i] for i in (~readable).nonzero().squeeze(1).tolist()]
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) under {root}, e.g. {skipped[0]}", stacklevel=3)
    kept = readable.nonzero().squeeze(1)
    # avoid a second full copy of a large set when every file was readable
    return (images if not skipped else images[kept]), kept


# --------------------------------------------------------------------------- file discovery


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursively), sorted by path."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def require_dir(root: Path | None, what: str, setting: str) -> Path:
    if root is None:
        raise LsmiaError(f"{what} needs a folder on disk: set {setting} to it")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LsmiaError(f"{what} folder {root} does not exist: fix {setting} or download the data there")
    return root


def require_inside(paths: list[Path], root: Path, setting: str) -> None:
    """Every file resolves inside ``root``: a symbolic link out of it once pulled a system folder into a data set."""
    real_root = root.resolve()
    for path in paths:
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise LsmiaError(
                f"{printable(path)} leads outside {setting} {printable(root)} (to {printable(real)}): real data is "
                f"read only from inside its folder: copy those images into {setting} or remove the link"
            )


def class_folder_files(folder: Path, name_prefix: str = "") -> LabelledFiles:
    """torchvision-ImageFolder style: one sorted sub-folder per class, images anywhere below it."""
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    require_printable_names(
        [d.name for d in class_dirs],
        f"identity folder in {printable(folder)}",
        "rename that folder (identity names are written into file names and report lines)",
    )
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = image_files(class_dir)
        paths += files
        labels += [label] * len(files)
    return LabelledFiles(paths, labels, [name_prefix + d.name for d in class_dirs])


def concat_files(parts: list[LabelledFiles]) -> LabelledFiles:
    """Concatenate class lists, shifting each part's labels past the previous parts' classes."""
    merged = LabelledFiles([], [], [])
    for part in parts:
        offset = len(merged.class_names)
        merged.paths += part.paths
        merged.labels += [label + offset for label in part.labels]
        merged.class_names += part.class_names
    return merged


# --------------------------------------------------------------------------- assembly


def check_identity_counts(labels: torch.Tensor, class_names: list[str], root: Path) -> None:
    """Every identity needs images on both sides of the split (after skipping unreadable files)."""
    counts = torch.bincount(labels, minlength=len(class_names))
    for label, count in enumerate(counts.tolist()):
        if count < MIN_IMAGES_PER_IDENTITY:
            raise LsmiaError(
                f"identity '{class_names[label]}' under {root} has {count} readable image(s), fewer than the "
                f"{MIN_IMAGES_PER_IDENTITY} a train/test split needs: add images or remove that identity"
            )


def require_listed_identities(files: LabelledFiles, root: Path, source: str, layout: str) -> None:
    if not files.paths:
        raise LsmiaError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}: "
            f"point data.root at a {source} folder laid out as {layout}"
        )
    if len(files.class_names) < 2:
        raise LsmiaError(
            f"{root} holds {len(files.class_names)} identity folder(s); the attack and its metrics need "
            f"at least 2 identities, each with test images: add identities laid out as {layout}"
        )
    require_inside(files.paths, root, "data.root")


def public_files_apart(
    public_root: Path | None, private: LabelledFiles, root: Path
) -> tuple[LabelledFiles, Path] | None:
    """The public files named by data.public_root and that folder, refused where they reach the private data."""
    if public_root is None:
        return None
    public_root = require_dir(Path(public_root), "data.public_root", "data.public_root")
    require_separate_folders(root, public_root)
    public = public_folder_files(public_root)
    require_no_private_files(public.paths, root)
    require_no_shared_identities(private.class_names, public.paths, public_root)
    require_inside(public.paths, public_root, "data.public_root")
    return public, public_root


def build_face_data(files: LabelledFiles, cfg: DataConfig, root: Path, source: str, layout: str) -> FaceData:
    """Decode, split per identity and attach the public images named by ``cfg.public_root``."""
    require_listed_identities(files, root, source, layout)
    public_part = public_files_apart(cfg.public_root, files, root)
    images, kept = decode_images(files.paths, cfg.image_size, root)
    if len(kept) == 0:
        raise LsmiaError(
            f"none of the {len(files.paths)} images under {root} could be read: "
            f"point data.root at a {source} folder of valid images laid out as {layout}"
        )
    labels = torch.tensor(files.labels, dtype=torch.long)[kept]
    check_identity_counts(labels, files.class_names, root)
    train_idx, test_idx = split_indices(labels, cfg.split, cfg.test_fraction, cfg.split_seed, len(files.paths), kept)
    everything = ImageSet(images, labels)
    public = None
    if public_part is not None:
        public, public_paths = decode_public(*public_part, cfg.image_size)
        require_no_shared_pictures(images, [files.paths[i] for i in kept.tolist()], public.images, public_paths)
    meta = {"source": source, "root": str(root), "skipped": len(files.paths) - len(kept), "resize": RESIZE_POLICY}
    if cfg.split == "ppa":  # only then, so the default data set keeps its bytes
        meta["split"] = "ppa"
    if source == "celeba" and cfg.celeba_layout == "hd_cropped":
        meta["celeba_layout"] = "hd_cropped"
    data = FaceData(
        train=everything.subset(train_idx),
        test=everything.subset(test_idx),
        class_names=files.class_names,
        public=public,
        meta=meta,
    )
    if cfg.split == "ppa":
        require_study_classes(data, f"{root} under data.split=ppa")
    return data


# --------------------------------------------------------------------------- public loaders


def load_facescrub(cfg: DataConfig) -> FaceData:
    """FaceScrub from ``<root>/actors/faces/<identity>/`` and ``<root>/actresses/faces/<identity>/``.

    Classes as in PPA's ImageFolder concatenation: the sorted actors, then the sorted
    actresses (530 identities in the full set). A missing group folder is allowed (e.g.
    actors only) as long as one exists. All identities are used (``num_identities`` is ignored).
    """
    root = require_dir(cfg.root, "data.source=facescrub", "data.root")
    group_dirs = [root / group / "faces" for group in FACESCRUB_GROUPS if (root / group / "faces").is_dir()]
    if not group_dirs:
        raise LsmiaError(
            f"no FaceScrub faces folders under {root} (expected {root}/actors/faces/<identity>/ "
            f"and {root}/actresses/faces/<identity>/): point data.root at the FaceScrub root"
        )
    files = concat_files([class_folder_files(d) for d in group_dirs])
    return build_face_data(files, cfg, root, "facescrub", "ROOT/actors/faces/<identity>/<images>")


def text_lines(path: Path, fix: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark allowed); LsmiaError naming the first line that is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise LsmiaError(f"{path} line {line_no} is not UTF-8 text: {fix}") from None


def is_identity_id(text: str) -> bool:
    """ASCII digits only: int() also takes Arabic-Indic and other Unicode digits, which no CelebA file holds."""
    return text.isascii() and text.isdigit() and len(text) <= CELEBA_ID_DIGITS


def is_inside_name(name: str) -> bool:
    """A relative file name that stays inside the image folder (no absolute path, no '..')."""
    pure = PurePosixPath(name)
    return not pure.is_absolute() and ".." not in pure.parts


def read_celeba_identities(path: Path) -> dict[str, int]:
    """``identity_CelebA.txt``: one ``<file name> <identity id>`` per line, each file listed once."""
    fix = "restore the original identity_CelebA.txt"
    identities: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text_lines(path, fix), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not is_identity_id(fields[1]):
            raise LsmiaError(f"{path} line {line_no} is not '<file name> <identity id>' (ASCII digits): {fix}")
        name = fields[0]
        if not is_inside_name(name):
            raise LsmiaError(
                f"{path} line {line_no} names '{printable(name)}', outside img_align_celeba (an absolute path or "
                f"'..'): {fix}"
            )
        if name in identities:
            raise LsmiaError(
                f"{path} line {line_no} lists {printable(name)} again (first on line {first_line[name]}): {fix}"
            )
        identities[name], first_line[name] = int(fields[1]), line_no
    return identities


def top_identities(identities: dict[str, int], count: int, tie_break: str = "smaller_id") -> list[int]:
    """The ``count`` identity ids with the most images, most first; among equal counts the smaller id first, or
    (``first_listed``) the identity listed first in ``identities`` (file order): PPA's stable sort of a Counter
    (datasets/celeba.py:29-34)."""
    per_identity = Counter(identities.values())  # keys in order of first listing
    if tie_break == "first_listed":
        return sorted(per_identity, key=lambda ident: -per_identity[ident])[:count]
    return sorted(per_identity, key=lambda ident: (-per_identity[ident], ident))[:count]


def hd_cropped_folder(root: Path) -> tuple[Path, str]:
    """HD-CelebA-Cropper's output folder for PPA's crops (``python align.py --crop_size_h 224 --crop_size_w 224
    --order 3 --face_factor 0.65 --save_dir ROOT``: ``ROOT/align_size(224,224)_move(0.250,0.000)_face_factor(0.650)_jpg/
    data/``, or ``_png``) and the extension its files have; LsmiaError naming the command when it is missing."""
    found = [(root / HD_CROP_FOLDER.format(fmt) / "data", fmt) for fmt in HD_CROP_FORMATS]
    present = [(folder, fmt) for folder, fmt in found if folder.is_dir()]
    if len(present) > 1:
        raise LsmiaError(
            f"{root} holds both {present[0][0]} and {present[1][0]}: keep one HD-CelebA-Cropper output "
            "(data.celeba_layout=hd_cropped)"
        )
    if not present:
        raise LsmiaError(
            f"{found[0][0]} does not exist (data.celeba_layout=hd_cropped): crop CelebA with HD-CelebA-Cropper, "
            f"python align.py --crop_size_h 224 --crop_size_w 224 --order 3 --face_factor 0.65 --save_dir {root} "
            "(README: 'CelebA at the paper's crops'), or set data.celeba_layout=aligned"
        )
    return present[0]


def load_celeba(cfg: DataConfig) -> FaceData:
    """CelebA: the ``cfg.num_identities`` identities with the most images, all official partitions merged.

    Labels 0..N-1 follow the selection order: most images first, ties by the smaller
    identity id or (``data.celeba_tie_break: first_listed``, PPA) the one listed first; class names are the
    CelebA identity ids as strings. Images come from ``<root>/img_align_celeba/`` or (``data.celeba_layout:
    hd_cropped``) HD-CelebA-Cropper's output folder under ``<root>``; a listed file that is missing there counts
    as unreadable.
    """
    root = require_dir(cfg.root, "data.source=celeba", "data.root")
    identity_file = root / "identity_CelebA.txt"
    if not identity_file.is_file():
        raise LsmiaError(
            f"{identity_file} does not exist: download identity_CelebA.txt from the CelebA Anno folder into data.root"
        )
    if cfg.celeba_layout == "hd_cropped":
        image_dir, extension = hd_cropped_folder(root)
        layout = f"ROOT/{HD_CROP_FOLDER.format(extension)}/data/<images>"
    else:
        image_dir, extension, layout = root / "img_align_celeba", "", "ROOT/img_align_celeba/<images>"
        if not image_dir.is_dir():
            raise LsmiaError(f"{image_dir} does not exist: unpack img_align_celeba.zip into data.root")
    identities = read_celeba_identities(identity_file)
    selected = top_identities(identities, cfg.num_identities, cfg.celeba_tie_break)
    if len(selected) < cfg.num_identities:
        raise LsmiaError(
            f"{identity_file} lists only {len(selected)} identities, fewer than "
            f"data.num_identities={cfg.num_identities}: lower data.num_identities"
        )
    label_of = {ident: label for label, ident in enumerate(selected)}
    chosen = sorted(name for name, ident in identities.items() if ident in label_of)
    files = LabelledFiles(
        # the cropper names each crop after its source file, with its own extension (its align.py:95)
        paths=[
            image_dir / (str(PurePosixPath(name).with_suffix(f".{extension}")) if extension else name)
            for name in chosen
        ],
        labels=[label_of[identities[name]] for name in chosen],
        class_names=[str(ident) for ident in selected],
    )
    return build_face_data(files, cfg, root, "celeba", layout)


def load_imagefolder(cfg: DataConfig) -> FaceData:
    """Any ``<root>/<class>/<images>`` tree, like torchvision's ImageFolder (classes sorted by name)."""
    root = require_dir(cfg.root, "data.source=imagefolder", "data.root")
    return build_face_data(class_folder_files(root), cfg, root, "imagefolder", "ROOT/<class>/<images>")


def public_folder_files(root: Path) -> LabelledFiles:
    """Every image anywhere below ``root``, labelled by its top-level sub-folder among the sorted ones.

    Images directly in ``root`` form a group named '.'; a flat folder is all label 0.
    """
    paths = image_files(root)
    if not paths:
        raise LsmiaError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}: "
            "point data.public_root at a folder of public face images"
        )
    groups = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "." for p in paths]
    names = sorted(set(groups))
    index_of = {name: i for i, name in enumerate(names)}
    return LabelledFiles(paths, [index_of[g] for g in groups], names)


def decode_public(files: LabelledFiles, root: Path, image_size: int) -> tuple[ImageSet, list[Path]]:
    """The public images and the paths of those that could be read."""
    images, kept = decode_images(files.paths, image_size, root)
    if len(kept) == 0:
        raise LsmiaError(
            f"none of the {len(files.paths)} images under {root} could be read: "
            "point data.public_root at a folder of valid images"
        )
    labels = torch.tensor(files.labels, dtype=torch.long)[kept]
    return ImageSet(images, labels), [files.paths[i] for i in kept.tolist()]


def load_public_folder(root: Path | str, image_size: int) -> ImageSet:
    """Public images for the prior: every image anywhere below ``root`` (see ``public_folder_files``)."""
    root = require_dir(Path(root), "data.public_root", "data.public_root")
    files = public_folder_files(root)
    require_inside(files.paths, root, "data.public_root")
    return decode_public(files, root, image_size)[0]


def load_real(cfg: DataConfig) -> FaceData:
    """Load the real data set named by ``cfg.source`` (plus the public folder, if any)."""
    loaders = {"facescrub": load_facescrub, "celeba": load_celeba, "imagefolder": load_imagefolder}
    if cfg.source not in loaders:
        raise LsmiaError(f"data.source={cfg.source} is not a real data set: use one of {', '.join(loaders)}")
    return loaders[cfg.source](cfg)
