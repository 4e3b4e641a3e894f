"""Real data loaders on tiny on-disk fixtures in the FaceScrub, CelebA and ImageFolder layouts."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsmia.config import DataConfig
from lsmia.data.base import FaceData, split_ppa
from lsmia.data.real import (
    decode_image,
    load_celeba,
    load_facescrub,
    load_imagefolder,
    load_public_folder,
    load_real,
    top_identities,
)
from lsmia.errors import LsmiaError
from tests.helpers.real_data import COLOURS, write_identity, write_image


def write_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())


def colour_index(image: torch.Tensor) -> int:
    """Index in COLOURS of the solid colour nearest to the image's mean."""
    mean = image.float().mean(dim=(1, 2))
    return int(torch.cdist(mean[None], torch.tensor(COLOURS, dtype=torch.float)[None])[0].argmin())


def all_images(data: FaceData) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([data.train.images, data.test.images]), torch.cat([data.train.labels, data.test.labels])


def quiet(load, cfg: DataConfig) -> FaceData:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean fixture must load without any warning
        return load(cfg)


@pytest.fixture
def facescrub_root(tmp_path: Path) -> Path:
    root = tmp_path / "facescrub"
    write_identity(root / "actors/faces/Zach_Braff", COLOURS[0], 5, ".jpeg")
    write_identity(root / "actors/faces/Adam_Sandler", COLOURS[1], 5)
    write_identity(root / "actresses/faces/Kate_Winslet", COLOURS[2], 6, ".JPG")
    write_identity(root / "actresses/faces/Ally_Sheedy", COLOURS[3], 5, ".bmp")
    (root / "actors/faces/Adam_Sandler/notes.txt").write_text("not an image")
    return root


@pytest.fixture
def imagefolder_root(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    for name, colour in zip(["carol", "alice", "bob"], COLOURS[:3], strict=False):
        write_identity(root / name, colour, 5)
    return root


def celeba_counts() -> dict[int, int]:
    # identity id -> image count: 7 and 3 tie at 6 (7 > 3, so 3 ranks first), 9 has the most.
    return {7: 6, 3: 6, 9: 8, 1: 4, 5: 2}


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    root = tmp_path / "celeba"
    lines, index = [], 0
    # interleave identities, as in the real file, so selection cannot rely on file order
    pending = {ident: count for ident, count in celeba_counts().items()}
    colour_of = {ident: COLOURS[i] for i, ident in enumerate(sorted(pending))}
    while any(pending.values()):
        for ident in sorted(pending):
            if pending[ident]:
                index += 1
                name = f"{index:06d}.jpg"
                write_image(root / "img_align_celeba" / name, colour_of[ident], (18, 22), fmt="PNG")
                lines.append(f"{name} {ident}")
                pending[ident] -= 1
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------- decoding


def test_decode_resizes_shorter_side_then_center_crops(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 255, 0), (10, 0, 30, 20))  # red | green (centre half) | red
    image.save(path)
    out = decode_image(path, 8)
    assert out is not None and out.dtype == torch.uint8 and out.shape == (3, 8, 8)
    # 40x20 -> 16x8, centre 8 columns are the green middle: no red left after the crop.
    assert out[1].min() >= 200 and out[0].max() <= 60


def test_decode_returns_none_for_corrupt_and_grey_becomes_rgb(tmp_path: Path) -> None:
    write_corrupt(tmp_path / "bad.jpg")
    assert decode_image(tmp_path / "bad.jpg", 8) is None
    Image.new("L", (10, 12), 77).save(tmp_path / "grey.png")
    grey = decode_image(tmp_path / "grey.png", 8)
    assert grey is not None and grey.shape == (3, 8, 8) and (grey == 77).all()


# --------------------------------------------------------------------------- FaceScrub


def test_facescrub_classes_counts_labels_and_sizes(facescrub_root: Path) -> None:
    data = quiet(load_facescrub, DataConfig(source="facescrub", root=facescrub_root, image_size=16))
    # actors sorted, then actresses sorted (PPA's ImageFolder concatenation)
    assert data.class_names == ["Adam_Sandler", "Zach_Braff", "Ally_Sheedy", "Kate_Winslet"]
    images, labels = all_images(data)
    assert images.shape == (21, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [5, 5, 5, 6]
    expected_colour = {0: 1, 1: 0, 2: 3, 3: 2}  # label -> COLOURS index written for that identity
    assert all(colour_index(img) == expected_colour[int(lab)] for img, lab in zip(images, labels, strict=False))
    assert data.meta == {
        "source": "facescrub",
        "root": str(facescrub_root),
        "skipped": 0,
        "resize": "shorter-side+center-crop",
    }
    assert data.public is None and data.image_size == 16


def image_keys(images: torch.Tensor, labels: torch.Tensor) -> set[tuple[int, int]]:
    """(label, brightness step) of each image: unique per file thanks to write_identity's shading."""
    return {(int(lab), round(img.float().mean().item())) for img, lab in zip(images, labels, strict=False)}


def test_facescrub_split_is_per_identity_disjoint_and_deterministic(facescrub_root: Path) -> None:
    cfg = DataConfig(source="facescrub", root=facescrub_root, image_size=8, test_fraction=0.2, split_seed=42)
    first, second = quiet(load_facescrub, cfg), quiet(load_facescrub, cfg)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.images, second.test.images)
    assert torch.equal(first.test.labels, second.test.labels)
    # 20 % of 5 or 6 images -> 1 test image per identity, the rest for training
    assert torch.bincount(first.test.labels).tolist() == [1, 1, 1, 1]
    assert torch.bincount(first.train.labels).tolist() == [4, 4, 4, 5]
    train_keys = image_keys(first.train.images, first.train.labels)
    test_keys = image_keys(first.test.images, first.test.labels)
    assert len(train_keys) == 17 and len(test_keys) == 4 and train_keys.isdisjoint(test_keys)
    others = [quiet(load_facescrub, cfg.model_copy(update={"split_seed": seed})) for seed in (1, 2, 3)]
    assert any(image_keys(o.test.images, o.test.labels) != test_keys for o in others)


def test_corrupt_file_is_skipped_with_one_warning(facescrub_root: Path) -> None:
    write_corrupt(facescrub_root / "actors/faces/Zach_Braff/broken.jpg")
    write_corrupt(facescrub_root / "actresses/faces/Ally_Sheedy/broken.png")
    with pytest.warns(UserWarning) as record:
        data = load_facescrub(DataConfig(source="facescrub", root=facescrub_root, image_size=8))
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"skipped 2 unreadable image(s) under {facescrub_root}, e.g. ") and "broken" in message
    assert data.meta["skipped"] == 2 and len(all_images(data)[1]) == 21


def test_facescrub_with_actors_only(tmp_path: Path) -> None:
    write_identity(tmp_path / "actors/faces/A", COLOURS[0], 3)
    write_identity(tmp_path / "actors/faces/B", COLOURS[1], 3)
    data = quiet(load_facescrub, DataConfig(source="facescrub", root=tmp_path, image_size=8))
    assert data.class_names == ["A", "B"]


# --------------------------------------------------------------------------- errors


def test_missing_root_and_unset_root_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(LsmiaError, match=r"does not exist: fix data.root"):
        load_real(DataConfig(source="imagefolder", root=tmp_path / "nowhere"))
    with pytest.raises(LsmiaError, match=r"needs a folder on disk: set data.root"):
        load_real(DataConfig(source="celeba"))


def test_empty_roots_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(LsmiaError, match=r"no images .* found under .*ROOT/<class>/<images>"):
        load_imagefolder(DataConfig(source="imagefolder", root=tmp_path))
    with pytest.raises(LsmiaError, match=r"no FaceScrub faces folders under .*point data.root"):
        load_facescrub(DataConfig(source="facescrub", root=tmp_path))
    (tmp_path / "actors/faces/Someone").mkdir(parents=True)
    with pytest.raises(LsmiaError, match=r"no images"):
        load_facescrub(DataConfig(source="facescrub", root=tmp_path))


def test_only_unreadable_images_is_a_user_error(tmp_path: Path) -> None:
    write_corrupt(tmp_path / "a/x.jpg")
    write_corrupt(tmp_path / "b/y.png")
    with pytest.warns(UserWarning, match="skipped 2"), pytest.raises(LsmiaError, match="none of the 2 images"):
        load_imagefolder(DataConfig(source="imagefolder", root=tmp_path))


def test_identity_with_too_few_images_names_it(imagefolder_root: Path) -> None:
    write_identity(imagefolder_root / "dave", COLOURS[3], 1)
    (imagefolder_root / "erin").mkdir()  # no images at all
    with pytest.raises(LsmiaError, match=r"identity 'dave' .* has 1 readable image\(s\).*remove that identity"):
        load_imagefolder(DataConfig(source="imagefolder", root=imagefolder_root))


def test_identity_left_with_one_image_after_skipping(imagefolder_root: Path) -> None:
    write_identity(imagefolder_root / "dave", COLOURS[3], 1)
    write_corrupt(imagefolder_root / "dave/broken.jpg")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(LsmiaError, match="identity 'dave'"):
        load_imagefolder(DataConfig(source="imagefolder", root=imagefolder_root))


def test_builtin_source_is_not_a_real_data_set() -> None:
    with pytest.raises(LsmiaError, match="not a real data set"):
        load_real(DataConfig(source="builtin"))


# --------------------------------------------------------------------------- CelebA


def test_top_identities_ties_broken_by_smaller_id() -> None:
    files = {f"{i}.jpg": ident for i, ident in enumerate([7, 7, 3, 3, 9, 9, 9, 1])}
    assert top_identities(files, 3) == [9, 3, 7]


def test_celeba_selects_top_n_and_relabels_by_count(celeba_root: Path) -> None:
    data = quiet(load_celeba, DataConfig(source="celeba", root=celeba_root, image_size=12, num_identities=3))
    assert data.class_names == ["9", "3", "7"]  # most images first; 3 and 7 tie at 6, smaller id first
    images, labels = all_images(data)
    assert images.shape == (20, 3, 12, 12)
    assert torch.bincount(labels).tolist() == [8, 6, 6]
    colour_of_id = {ident: i for i, ident in enumerate(sorted(celeba_counts()))}
    assert all(
        colour_index(img) == colour_of_id[int(data.class_names[int(lab)])]
        for img, lab in zip(images, labels, strict=False)
    )
    assert data.meta["source"] == "celeba" and data.meta["skipped"] == 0


def test_celeba_missing_listed_file_is_skipped(celeba_root: Path) -> None:
    (celeba_root / "img_align_celeba/000001.jpg").unlink()  # the first file belongs to identity 1
    cfg = DataConfig(source="celeba", root=celeba_root, image_size=8, num_identities=4)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        data = load_celeba(cfg)
    assert data.class_names == ["9", "3", "7", "1"] and torch.bincount(all_images(data)[1]).tolist() == [8, 6, 6, 3]


def test_celeba_errors(celeba_root: Path) -> None:
    with pytest.raises(LsmiaError, match=r"lists only 5 identities, fewer than data.num_identities=6"):
        load_celeba(DataConfig(source="celeba", root=celeba_root, num_identities=6))
    (celeba_root / "identity_CelebA.txt").unlink()
    with pytest.raises(LsmiaError, match=r"identity_CelebA.txt does not exist: download"):
        load_celeba(DataConfig(source="celeba", root=celeba_root))


def test_celeba_malformed_identity_file(celeba_root: Path) -> None:
    (celeba_root / "identity_CelebA.txt").write_text("000001.jpg 9\n000002.jpg\n")
    with pytest.raises(LsmiaError, match="line 2 is not"):
        load_celeba(DataConfig(source="celeba", root=celeba_root))


# --------------------------------------------------------------------------- ImageFolder and public


def test_imagefolder_sorted_classes_nested_files_and_extensions(imagefolder_root: Path) -> None:
    write_image(imagefolder_root / "alice/deeper/extra.WEBP", COLOURS[1], (20, 20), fmt="WEBP")
    data = quiet(load_real, DataConfig(source="imagefolder", root=imagefolder_root, image_size=10))
    assert data.class_names == ["alice", "bob", "carol"]
    images, labels = all_images(data)
    assert torch.bincount(labels).tolist() == [6, 5, 5] and images.shape[-2:] == (10, 10)
    assert all(colour_index(img) == [1, 2, 0][int(lab)] for img, lab in zip(images, labels, strict=False))


def test_public_folder_flat_and_nested(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    write_identity(flat, COLOURS[0], 4)
    public = load_public_folder(flat, 8)
    assert public.images.shape == (4, 3, 8, 8) and public.labels.tolist() == [0, 0, 0, 0]

    nested = tmp_path / "nested"
    write_identity(nested / "b", COLOURS[1], 2)
    write_identity(nested / "a", COLOURS[2], 3)
    write_corrupt(nested / "a/bad.jpg")
    with pytest.warns(UserWarning, match="skipped 1"):
        public = load_public_folder(nested, 8)
    assert torch.bincount(public.labels).tolist() == [3, 2]
    assert all(colour_index(img) == [2, 1][int(lab)] for img, lab in zip(public.images, public.labels, strict=False))

    (tmp_path / "empty").mkdir()
    with pytest.raises(LsmiaError, match=r"no images .* point data.public_root"):
        load_public_folder(tmp_path / "empty", 8)


def test_load_real_attaches_public_images(imagefolder_root: Path, tmp_path: Path) -> None:
    write_identity(tmp_path / "ffhq", COLOURS[4], 3)
    cfg = DataConfig(source="imagefolder", root=imagefolder_root, public_root=tmp_path / "ffhq", image_size=8)
    data = quiet(load_real, cfg)
    assert data.public is not None and data.public.images.shape == (3, 3, 8, 8)
    assert all(colour_index(img) == 4 for img in data.public.images)
    with pytest.raises(LsmiaError, match=r"data.public_root folder .* does not exist"):
        load_real(cfg.model_copy(update={"public_root": tmp_path / "missing"}))


# --------------------------------------------------------------------------- PPA's split and CelebA crops


def ppa_split_positions(count: int, seed: int = 42) -> list[int]:
    """Test positions by PPA's own lines (datasets/facescrub.py:71-76): global seed, shuffle, first 90 % train."""
    indices = list(range(count))
    np.random.seed(seed)
    np.random.shuffle(indices)
    training_set_size = int(0.9 * count)
    return sorted(indices[training_set_size:])


def shade_keys(data: FaceData, split: str, base: dict[int, int]) -> set[tuple[int, int]]:
    """(label, shade step of write_identity) of each image of ``split``; ``base`` maps a label to its colour index."""
    images = getattr(data, split)
    keys = set()
    for image, label in zip(images.images, images.labels, strict=False):
        mean = image.float().mean().item() - sum(COLOURS[base[int(label)]]) / 3
        keys.add((int(label), round(mean / 4)))
    return keys


def test_split_ppa_is_numpys_seeded_shuffle() -> None:
    # np.random.seed(42); shuffle(list(range(10))) gives [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]; int(0.9 * 10) = 9 train
    train, test = split_ppa(10, 0.1, 42)
    assert test.tolist() == [6] and train.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    # 21 images: [0, 17, 15, 1, 8, 5, 11, 3, 18, 16, 13, 2, 9, 20, 4, 12, 7, 10, 14, 19, 6], the last 3 test
    assert split_ppa(21, 0.1, 42)[1].tolist() == [6, 14, 19] == ppa_split_positions(21)
    assert split_ppa(21, 0.1, 7)[1].tolist() == ppa_split_positions(21, 7)


def test_facescrub_ppa_split_takes_the_images_ppa_takes(facescrub_root: Path) -> None:
    cfg = DataConfig(source="facescrub", root=facescrub_root, image_size=8, split="ppa")
    data = quiet(load_facescrub, cfg)
    # listed as PPA's ImageFolder concatenation lists them: Adam_Sandler 0-4, Zach_Braff 5-9, Ally_Sheedy 10-14,
    # Kate_Winslet 15-20; positions 6, 14, 19 are Zach's 2nd, Ally's 5th and Kate's 5th image
    base = {0: 1, 1: 0, 2: 3, 3: 2}  # label -> COLOURS index
    assert shade_keys(data, "test", base) == {(1, 1), (2, 4), (3, 4)}
    assert len(data.train) == 18 and data.meta["split"] == "ppa"
    stratified = quiet(load_facescrub, cfg.model_copy(update={"split": "stratified"}))
    assert "split" not in stratified.meta and torch.bincount(stratified.test.labels).tolist() == [1, 1, 1, 1]


def test_ppa_split_shuffles_unreadable_files_too_and_drops_them(facescrub_root: Path) -> None:
    write_corrupt(facescrub_root / "actors/faces/Adam_Sandler/broken.jpg")  # listed first: position 0 of 22
    cfg = DataConfig(source="facescrub", root=facescrub_root, image_size=8, split="ppa")
    with pytest.warns(UserWarning, match="skipped 1"):
        data = load_facescrub(cfg)
    listed = [(0, None), *[(0, i) for i in range(5)], *[(1, i) for i in range(5)]]
    listed += [(2, i) for i in range(5)] + [(3, i) for i in range(6)]
    expected = {listed[p] for p in ppa_split_positions(22) if listed[p][1] is not None}
    assert shade_keys(data, "test", {0: 1, 1: 0, 2: 3, 3: 2}) == expected
    assert len(data.train) + len(data.test) == 21


def test_ppa_split_allows_an_identity_without_test_images_but_not_without_training(tmp_path: Path) -> None:
    # 5 identities x 2 images: 9 train, position 6 (identity 3's first image) is the only test image
    for i in range(5):
        write_identity(tmp_path / "faces" / f"id{i}", COLOURS[i], 2)
    data = quiet(load_imagefolder, DataConfig(source="imagefolder", root=tmp_path / "faces", image_size=8, split="ppa"))
    assert data.test.labels.tolist() == [3] and torch.bincount(data.train.labels).tolist() == [2, 2, 2, 1, 2]
    path = tmp_path / "dataset.pt"
    data.save(path)
    assert FaceData.load(path).test.labels.tolist() == [3]  # identities 0, 1, 2, 4 have no test image: allowed
    cfg = DataConfig(source="imagefolder", root=tmp_path / "faces", image_size=8, split="ppa", test_fraction=0.5)
    # int(0.5 * 10) = 5 train; the shuffle [8, 1, 5, 0, 7, 2, 9, 4, 3, 6] leaves identity 1 (2, 3) all in test
    with pytest.raises(
        LsmiaError, match=r"identity 'id1' has no training images: PPA's global shuffle .*split=stratified"
    ):
        quiet(load_imagefolder, cfg)


def hd_folder(root: Path, fmt: str = "png") -> Path:
    return root / f"align_size(224,224)_move(0.250,0.000)_face_factor(0.650)_{fmt}" / "data"


def write_hd_crops(root: Path, fmt: str = "png") -> None:
    """HD-CelebA-Cropper's output for every listed file: a square crop named after it, in the cropper's format."""
    for line in (root / "identity_CelebA.txt").read_text().split():
        if line.endswith(".jpg"):
            colour = Image.open(root / "img_align_celeba" / line).convert("RGB").getpixel((0, 0))
            assert isinstance(colour, tuple)  # an RGB pixel
            write_image(hd_folder(root, fmt) / line.replace(".jpg", f".{fmt}"), colour, (30, 30), fmt=fmt.upper())


def test_celeba_hd_cropped_layout_reads_the_croppers_output(celeba_root: Path) -> None:
    write_hd_crops(celeba_root)
    aligned = quiet(load_celeba, DataConfig(source="celeba", root=celeba_root, image_size=12, num_identities=3))
    shutil.rmtree(celeba_root / "img_align_celeba")  # the HD layout needs only the crops and identity_CelebA.txt
    cfg = DataConfig(source="celeba", root=celeba_root, image_size=12, num_identities=3, celeba_layout="hd_cropped")
    hd = quiet(load_celeba, cfg)
    assert hd.class_names == aligned.class_names == ["9", "3", "7"]
    assert torch.equal(all_images(hd)[1], all_images(aligned)[1]) and hd.meta["celeba_layout"] == "hd_cropped"
    assert all(
        colour_index(a) == colour_index(b) for a, b in zip(all_images(hd)[0], all_images(aligned)[0], strict=True)
    )
    hd_folder(celeba_root, "jpg").mkdir(parents=True)
    with pytest.raises(LsmiaError, match=r"holds both .*_jpg/data and .*_png/data: keep one"):
        load_celeba(cfg)


def test_celeba_hd_cropped_missing_names_the_cropper_command(celeba_root: Path) -> None:
    cfg = DataConfig(source="celeba", root=celeba_root, num_identities=3, celeba_layout="hd_cropped")
    with pytest.raises(LsmiaError) as err:
        load_celeba(cfg)
    message = str(err.value)
    assert "\n" not in message and "face_factor(0.650)_jpg/data does not exist" in message
    assert "python align.py --crop_size_h 224 --crop_size_w 224 --order 3 --face_factor 0.65" in message


def test_top_identities_first_listed_is_ppas_stable_count_sort() -> None:
    from collections import Counter

    files = {f"{i}.jpg": ident for i, ident in enumerate([7, 3, 7, 3, 9, 9, 9, 1, 5, 5])}
    targets = list(files.values())
    ppa = list(dict(sorted(Counter(targets).items(), key=lambda item: item[1], reverse=True)))  # celeba.py:30-34
    assert top_identities(files, 4, "first_listed") == ppa[:4] == [9, 7, 3, 5]
    assert top_identities(files, 4) == [9, 3, 5, 7]
