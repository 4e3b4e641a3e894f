"""Bad input at the real-data loaders (issue 23): public data reaching the private data, images that decode
wrong or take gigabytes, names later stages cannot write, CelebA identity files that parse wrong, links out
of the data root, and prepared data files of the wrong kind.

Each bad input ends as one line ``error: ...`` (no traceback), exit code 2, with the outputs of an earlier
run byte for byte as they were; legitimate inputs load to the right values.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lsmia.config import DataConfig
from lsmia.data.real import decode_image, load_celeba, load_real
from lsmia.errors import LsmiaError
from lsmia.tracking.stages import data_facts
from tests.helpers.bad_input import assert_one_line_error, cli, snapshot, working_copy
from tests.helpers.paths import TINY
from tests.helpers.real_data import COLOURS, write_identity, write_image

torch.set_num_threads(1)

FOLDER = ("-S", "data.source=imagefolder", "-S", "data.root=faces", "-S", "data.image_size=8")
CELEBA = (
    "-S",
    "data.source=celeba",
    "-S",
    "data.root=celeba",
    "-S",
    "data.num_identities=2",
    "-S",
    "data.image_size=8",
)
PRIVATE = {"alice": COLOURS[0], "bob": COLOURS[1], "carol": COLOURS[2]}
LEAK = "the prior would learn the private identities it attacks"


def write_celeba(root: Path) -> None:
    """Two identities (ids 7 and 3) of three images each, listed as in identity_CelebA.txt."""
    lines = []
    for i in range(6):
        name, ident = f"{i + 1:06d}.jpg", (7, 3)[i % 2]
        write_image(root / "img_align_celeba" / name, tuple(c + 4 * i for c in COLOURS[i % 2]), (8, 10), fmt="PNG")
        lines.append(f"{name} {ident}")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")


def png_header(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming ``width`` x ``height`` grey pixels in a file of a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def write_grey16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder whose prepared data came from the image folder ``faces`` (written once)."""
    root = tmp_path_factory.mktemp("earlier")
    shutil.copy(TINY, root / "params.yaml")
    for name, colour in PRIVATE.items():
        write_identity(root / "faces" / name, colour, 3)
    write_celeba(root / "celeba")
    old = Path.cwd()
    os.chdir(root)
    try:
        result = cli("data", *FOLDER)
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def study(earlier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return working_copy(earlier, tmp_path, monkeypatch, symlinks=True)


def assert_refused(study: Path, args: tuple[str, ...], *needles: str) -> str:
    before = snapshot(study / "out")
    line = assert_one_line_error(cli(*args), *needles)
    assert snapshot(study / "out") == before
    return line


def public_folder(study: Path) -> Path:
    """A legitimate public folder: two identities the private data does not hold."""
    write_identity(study / "public" / "dave", COLOURS[3], 2)
    write_identity(study / "public" / "erin", COLOURS[4], 2)
    return study / "public"


# --------------------------------------------------------------------------- case 6: public data reaching the private


@pytest.mark.parametrize(
    "public_root, relation",
    [
        ("faces", "is the folder data.root"),
        ("faces/alice", "lies inside data.root"),
        (".", "holds data.root"),
        ("link-to-faces", "is the folder data.root"),
    ],
    ids=["same-folder", "inside-private", "holds-private", "link-to-private"],
)
def test_public_root_that_overlaps_the_private_root(study: Path, public_root: str, relation: str) -> None:
    (study / "link-to-faces").symlink_to(study / "faces", target_is_directory=True)
    line = assert_refused(
        study, ("data", *FOLDER, "-S", f"data.public_root={public_root}"), f"data.public_root {public_root} ", relation
    )
    assert LEAK in line and "point data.public_root at a separate folder" in line


def link_into_private(public: Path, study: Path) -> None:
    (public / "dave" / "extra.png").symlink_to(study / "faces/alice/img00.png")


def copy_private_identity(public: Path, study: Path) -> None:
    write_identity(public / "more" / "Alice", COLOURS[5], 2)  # another layout, other pictures, the same name


def copy_private_picture(public: Path, study: Path) -> None:
    shutil.copy(study / "faces/bob/img01.png", public / "erin" / "renamed.png")


def hard_link_private_picture(public: Path, study: Path) -> None:
    os.link(study / "faces/carol/img02.png", public / "dave" / "linked.png")


@pytest.mark.parametrize(
    "make, needles",
    [
        (link_into_private, ["public image public/dave/extra.png leads into data.root", "remove that link"]),
        (copy_private_identity, ["public/more/Alice, named like the private identity 'alice'", "remove that identity"]),
        (
            copy_private_picture,
            ["public/erin/renamed.png is the same picture as the private image faces/bob/img01.png"],
        ),
        (hard_link_private_picture, ["public/dave/linked.png is the same picture as the private image faces/carol"]),
    ],
    ids=["symlink", "identity-folder", "copied-file", "hard-link"],
)
def test_public_files_that_reach_private_ones(
    study: Path, make: Callable[[Path, Path], None], needles: list[str]
) -> None:
    make(public_folder(study), study)
    line = assert_refused(study, ("data", *FOLDER, "-S", "data.public_root=public"), *needles)
    assert LEAK in line


def test_a_separate_public_folder_with_numbered_folders_like_the_private_ones_loads(tmp_path: Path) -> None:
    # numbers name no one (FFHQ's 00000 folders, CelebA's ids): equal numbers are not a shared identity
    for name, colour in (("00001", COLOURS[0]), ("00002", COLOURS[1])):
        write_identity(tmp_path / "private" / name, colour, 3)
    for name, colour in (("00001", COLOURS[3]), ("00002", COLOURS[4])):
        write_identity(tmp_path / "public" / name, colour, 2)
    cfg = DataConfig(source="imagefolder", root=tmp_path / "private", public_root=tmp_path / "public", image_size=8)
    data = load_real(cfg)
    assert data.public is not None and data.public.labels.tolist() == [0, 0, 1, 1]
    assert data.public.images[:, 0].float().mean(dim=(1, 2)).round().tolist() == [230.0, 234.0, 20.0, 24.0]


def test_celeba_public_root_inside_the_celeba_folder(study: Path) -> None:
    line = assert_refused(
        study, ("data", *CELEBA, "-S", "data.public_root=celeba/img_align_celeba"), "lies inside data.root celeba"
    )
    assert LEAK in line


# --------------------------------------------------------------------------- case 10: images


def test_16_bit_grey_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    values = np.zeros((8, 8))
    values[:, 4:] = 65535
    values[0, 0] = 257 * 100
    write_grey16(tmp_path / "grey.png", values)
    image = decode_image(tmp_path / "grey.png", 8)
    assert image is not None
    expected = np.rint(values / 257).astype(np.uint8)
    assert all(np.array_equal(image[c].numpy(), expected) for c in range(3))


def test_16_bit_grey_identities_load_with_their_grey_levels(tmp_path: Path) -> None:
    for name, level in (("dark", 20), ("light", 200)):
        for i in range(3):
            write_grey16(tmp_path / "faces" / name / f"{i}.png", np.full((10, 12), 257 * (level + i)))
    data = load_real(DataConfig(source="imagefolder", root=tmp_path / "faces", image_size=8))
    images = torch.cat([data.train.images, data.test.images])
    labels = torch.cat([data.train.labels, data.test.labels])
    for label, level in ((0, 20), (1, 200)):
        levels = sorted(int(img.unique()) for img in images[labels == label])
        assert levels == [level, level + 1, level + 2]


@pytest.mark.parametrize(
    "width, height, needle",
    [(9000, 9000, "holds 9000x9000 = 81 million pixels"), (20000, 20000, "holds over 179 million pixels")],
    ids=["over-the-cap", "over-pillow-s-limit"],
)
def test_near_bomb_png_is_refused_from_its_header(study: Path, width: int, height: int, needle: str) -> None:
    png_header(study / "faces/bob/huge.png", width, height)
    assert (study / "faces/bob/huge.png").stat().st_size < 1000
    assert_refused(
        study,
        ("data", *FOLDER),
        "image faces/bob/huge.png",
        needle,
        "at most 64 million pixels per image",
        "downscale that file or remove it",
    )


@pytest.mark.parametrize(
    "name, shown",
    [("new\nline", "new\\nline"), ("esc\x1bape", "esc\\x1bape"), (b"bad\xffbyte", "bad\\udcffbyte")],
    ids=["newline", "escape", "not-utf8"],
)
def test_identity_folder_with_a_control_character(study: Path, name: str | bytes, shown: str) -> None:
    folder = os.path.join(os.fsencode(study / "faces"), os.fsencode(name))
    os.mkdir(folder)
    for i in range(3):
        Image.new("RGB", (8, 8), (90, 90, 10 * i)).save(os.fsdecode(os.path.join(folder, f"{i}.png".encode())))
    assert_refused(
        study, ("data", *FOLDER), f"identity folder in faces '{shown}' holds '", "undecodable", "rename that folder"
    )


def test_prepared_data_with_a_control_character_in_a_name(study: Path) -> None:
    obj = torch.load(study / "out/data/dataset.pt", weights_only=True)
    obj["class_names"][1] = "b\nob"
    torch.save(obj, study / "named.pt")
    assert_refused(
        study,
        ("train", "--alpha", "0.1", "--data", "named.pt", "--out-dir", "one"),
        "named.pt: identity 'b\\nob' holds '\\n', a control, line-break or undecodable character",
    )
    assert not (study / "one").exists()


def test_printable_non_ascii_names_load(tmp_path: Path) -> None:
    for name, colour in (("José_Ñúñez", COLOURS[0]), ("Zoë Ångström", COLOURS[1])):
        write_identity(tmp_path / "faces" / name, colour, 3)
    data = load_real(DataConfig(source="imagefolder", root=tmp_path / "faces", image_size=8))
    assert data.class_names == ["José_Ñúñez", "Zoë Ångström"]


# --------------------------------------------------------------------------- case 11: CelebA identity file, links


@pytest.mark.parametrize(
    "third_line, needle",
    [
        (b"caf\xe9.jpg 7", "line 3 is not UTF-8 text"),
        ("000003.jpg ٧".encode(), "line 3 is not '<file name> <identity id>' (ASCII digits)"),
        ("000003.jpg ²".encode(), "line 3 is not '<file name> <identity id>' (ASCII digits)"),
        (b"000003.jpg " + b"7" * 5000, "line 3 is not '<file name> <identity id>' (ASCII digits)"),
        (b"../identity_CelebA.txt 7", "line 3 names '../identity_CelebA.txt', outside img_align_celeba"),
        (b"/etc/hostname 7", "line 3 names '/etc/hostname', outside img_align_celeba"),
        (b"000001.jpg 3", "line 3 lists 000001.jpg again (first on line 1)"),
    ],
    ids=["latin-1", "arabic-indic-digit", "superscript-digit", "5000-digits", "dot-dot", "absolute", "listed-twice"],
)
def test_celeba_identity_file_that_parses_wrong(study: Path, third_line: bytes, needle: str) -> None:
    listing = study / "celeba/identity_CelebA.txt"
    lines = listing.read_bytes().split(b"\n")
    lines[2] = third_line
    listing.write_bytes(b"\n".join(lines))
    assert_refused(study, ("data", *CELEBA), f"celeba/identity_CelebA.txt {needle}", "restore the original")


def test_celeba_identity_file_with_a_byte_order_mark_loads_the_same(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    cfg = DataConfig(source="celeba", root=tmp_path, num_identities=2, image_size=8)
    plain = load_celeba(cfg)
    listing = tmp_path / "identity_CelebA.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + listing.read_bytes().replace(b"\n", b"\r\n"))
    marked = load_celeba(cfg)
    assert marked.class_names == plain.class_names == ["3", "7"]
    assert torch.equal(marked.train.images, plain.train.images) and torch.equal(marked.test.labels, plain.test.labels)


def link_identity_folder(study: Path) -> str:
    write_identity(study / "elsewhere/dora", COLOURS[3], 3)
    (study / "faces/dora").symlink_to(study / "elsewhere/dora", target_is_directory=True)
    return "faces/dora/img00.png leads outside data.root faces"


def link_image_file(study: Path) -> str:
    write_image(study / "elsewhere/x.png", COLOURS[4], (8, 8))
    (study / "faces/alice/x.png").symlink_to(study / "elsewhere/x.png")
    return "faces/alice/x.png leads outside data.root faces"


def link_celeba_image(study: Path) -> str:
    write_image(study / "elsewhere/x.png", COLOURS[4], (8, 8))
    (study / "celeba/img_align_celeba/000002.jpg").unlink()
    (study / "celeba/img_align_celeba/000002.jpg").symlink_to(study / "elsewhere/x.png")
    return "celeba/img_align_celeba/000002.jpg leads outside data.root celeba"


def link_public_image(study: Path) -> str:
    write_image(study / "elsewhere/x.png", COLOURS[4], (8, 8))
    (public_folder(study) / "dave/x.png").symlink_to(study / "elsewhere/x.png")
    return "public/dave/x.png leads outside data.public_root public"


@pytest.mark.parametrize(
    "make, args",
    [
        (link_identity_folder, FOLDER),
        (link_image_file, FOLDER),
        (link_celeba_image, CELEBA),
        (link_public_image, (*FOLDER, "-S", "data.public_root=public")),
    ],
    ids=["identity-folder", "image-file", "celeba-image", "public-image"],
)
def test_links_out_of_the_data_root_are_refused(
    study: Path, make: Callable[[Path], str], args: tuple[str, ...]
) -> None:
    needle = make(study)
    line = assert_refused(study, ("data", *args), needle, "copy those images into")
    assert str((study / "elsewhere").resolve()) in line


def test_data_root_reached_through_a_link_loads(tmp_path: Path) -> None:
    for name, colour in PRIVATE.items():
        write_identity(tmp_path / "disk" / name, colour, 3)
    (tmp_path / "faces").symlink_to(tmp_path / "disk", target_is_directory=True)
    data = load_real(DataConfig(source="imagefolder", root=tmp_path / "faces", image_size=8))
    assert data.class_names == ["alice", "bob", "carol"] and len(data.train) + len(data.test) == 9


# --------------------------------------------------------------------------- case 12: prepared data of the wrong kind


def without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in keys}


# each entry: the prepared data dict -> the object saved in its place, and what the error says
WRONG_KIND: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "a-list": (lambda obj: [1, 2, 3], "it holds a list, expected a dict of image and label tensors"),
    "a-tensor": (lambda obj: torch.zeros(3), "it holds a Tensor, expected a dict"),
    "lacks-keys": (lambda obj: without(obj, "test_labels", "class_names"), "it lacks test_labels, class_names"),
    "images-as-list": (
        lambda obj: {**obj, "train_images": obj["train_images"].tolist()},
        "'train_images' is a list, expected a uint8 image tensor [N, 3, S, S]",
    ),
    "float-labels": (
        lambda obj: {**obj, "test_labels": obj["test_labels"].float() + 0.5},
        "'test_labels' is a torch.float32 tensor (3,), expected integers [N]",
    ),
    "labels-out-of-range": (
        lambda obj: {**obj, "train_labels": torch.full_like(obj["train_labels"], 7)},
        "its train labels leave 0..2 (one per class name)",
    ),
    "other-image-size": (
        lambda obj: {**obj, "test_images": torch.zeros(3, 3, 6, 6, dtype=torch.uint8)},
        "its test images are (6, 6), expected (8, 8)",
    ),
    "names-not-strings": (
        lambda obj: {**obj, "class_names": [1, 2, 3]},
        "'class_names' holds a value that is not a string",
    ),
    "meta-as-string": (lambda obj: {**obj, "meta": "x"}, "'meta' is a str, expected a dict"),
    "public-labels-only": (
        lambda obj: {**obj, "public_labels": torch.zeros(2, dtype=torch.long)},
        "it holds only one of public_images and public_labels",
    ),
    "short-attribute-table": (
        lambda obj: {**obj, "attributes": {"hair": torch.zeros(2, dtype=torch.long)}},
        "'attributes' entry 'hair' is not a tensor of at least 3 values",
    ),
}


@pytest.mark.parametrize("kind", list(WRONG_KIND))
def test_prepared_data_file_of_the_wrong_kind(study: Path, kind: str) -> None:
    make, needle = WRONG_KIND[kind]
    torch.save(make(torch.load(study / "out/data/dataset.pt", weights_only=True)), study / "bad.pt")
    assert_refused(
        study,
        ("train", "--alpha", "0.1", "--data", "bad.pt", "--out-dir", "one"),
        "bad.pt is not a prepared lsmia data set",
        needle,
        "re-run 'lsmia data'",
    )
    assert not (study / "one").exists()


@pytest.mark.parametrize(
    "content", [b"[1, 2]", b"{not json", b'{"num_classes": 3}\xff'], ids=["a-list", "not-json", "not-utf8"]
)
def test_damaged_data_summary_beside_the_data_file(study: Path, content: bytes) -> None:
    (study / "out/data/summary.json").write_bytes(content)
    with pytest.raises(LsmiaError, match=r"summary.json is not the data summary 'lsmia data' writes .*: re-run"):
        data_facts(study / "out/data/dataset.pt")
