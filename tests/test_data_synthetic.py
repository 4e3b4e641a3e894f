import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsmia.config import DataConfig
from lsmia.data.base import FaceData
from lsmia.data.synthetic import (
    ATTRIBUTE_VALUES,
    attribute_cardinality,
    attribute_names,
    render_builtin,
    render_faces,
    sample_identities,
)
from lsmia.errors import LsmiaError


def small_config(**overrides: object) -> DataConfig:
    values: dict[str, object] = dict(
        num_identities=6,
        num_public_identities=4,
        images_per_identity=6,
        public_images_per_identity=3,
        test_fraction=0.34,
        image_size=32,
    )
    values.update(overrides)
    return DataConfig(**values)


@pytest.fixture(scope="module")
def data() -> FaceData:
    return render_builtin(small_config())


def combos_of(table: dict[str, torch.Tensor] | None) -> torch.Tensor:
    assert table is not None, "built-in data carries its attribute tables"
    return torch.stack([table[name] for name in attribute_names()], dim=1)


def test_shapes_dtypes_and_labels(data: FaceData) -> None:
    assert data.train.images.shape == (24, 3, 32, 32) and data.test.images.shape == (12, 3, 32, 32)
    assert data.public is not None and data.public.images.shape == (12, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.class_names == ["id_000", "id_001", "id_002", "id_003", "id_004", "id_005"]
    assert sorted(data.public.labels.unique().tolist()) == [0, 1, 2, 3]
    assert data.meta["source"] == "builtin"
    assert data.meta["attribute_values"] == ATTRIBUTE_VALUES


def test_64_pixel_rendering() -> None:
    data = render_builtin(small_config(image_size=64, images_per_identity=3, test_fraction=0.34))
    assert data.train.images.shape[1:] == (3, 64, 64) and data.image_size == 64
    assert data.train.float_images().std() > 0.1


def test_split_sizes_per_identity(data: FaceData) -> None:
    assert torch.bincount(data.train.labels).tolist() == [4] * 6
    assert torch.bincount(data.test.labels).tolist() == [2] * 6


def test_attribute_tables(data: FaceData) -> None:
    assert data.attributes is not None and data.public_attributes is not None
    assert data.attribute_cardinality == attribute_cardinality()
    assert 10 <= len(attribute_names()) <= 15
    for name, card in attribute_cardinality().items():
        assert 2 <= card <= 6
        assert data.attributes[name].shape == (6,) and data.attributes[name].dtype == torch.int64
        assert data.public_attributes[name].shape == (4,)
        assert int(data.attributes[name].max()) < card and int(data.attributes[name].min()) >= 0


def test_same_config_is_bit_identical_and_other_seed_differs(data: FaceData) -> None:
    again = render_builtin(small_config())
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.test.images, data.test.images)
    assert data.public is not None and again.public is not None
    assert torch.equal(again.public.images, data.public.images)
    other = render_builtin(small_config(seed=1))
    assert not torch.equal(other.train.images, data.train.images)
    assert not torch.equal(combos_of(other.attributes), combos_of(data.attributes))


def test_rendering_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    render_builtin(small_config(images_per_identity=2, public_images_per_identity=1))
    assert torch.equal(torch.rand(3), expected)


def test_identity_combinations_distinct_and_private_public_disjoint() -> None:
    private, public = sample_identities(200, 300, seed=3)
    everything = torch.cat([private, public])
    assert len(torch.unique(everything, dim=0)) == 500
    private_rows = {tuple(row) for row in private.tolist()}
    assert not private_rows & {tuple(row) for row in public.tolist()}


def test_rendered_data_combinations_distinct(data: FaceData) -> None:
    assert data.attributes is not None and data.public_attributes is not None
    both = torch.cat([combos_of(data.attributes), combos_of(data.public_attributes)])
    assert len(torch.unique(both, dim=0)) == 10


def test_attribute_values_are_shared_across_identities() -> None:
    private, public = sample_identities(60, 60, seed=0)
    for group in (private, public):
        for column, card in enumerate(attribute_cardinality().values()):
            counts = torch.bincount(group[:, column], minlength=card)
            assert int(counts.min()) >= 3, f"attribute {attribute_names()[column]} has a rare value: {counts}"


def test_every_identity_has_a_close_look_alike() -> None:
    private, _ = sample_identities(50, 10, seed=0)
    distance = (private[:, None, :] != private[None, :, :]).sum(-1) + 100 * torch.eye(50, dtype=torch.long)
    nearest = distance.min(dim=1).values
    assert int(nearest.min()) >= 1
    assert float(nearest.float().median()) <= 3


def test_sampling_is_deterministic() -> None:
    first, second = sample_identities(20, 20, seed=5), sample_identities(20, 20, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_too_many_identities_is_a_user_error() -> None:
    with pytest.raises(LsmiaError, match="num_identities"):
        sample_identities(10**9, 10, seed=0)


def pair_difference(difficulty: float) -> float:
    """Mean absolute difference between images of the same identity."""
    combo, _ = sample_identities(1, 1, seed=0)
    images = render_faces(combo.repeat(16, 1), 32, difficulty, torch.Generator().manual_seed(0)).float() / 255
    return float((images[::2] - images[1::2]).abs().mean())


def test_difficulty_zero_removes_nuisance() -> None:
    calm, hard = pair_difference(0.0), pair_difference(1.0)
    assert hard > 0.05
    assert calm < 0.1 * hard


def test_images_are_not_degenerate(data: FaceData) -> None:
    images = data.train.float_images()
    per_image_std = images.flatten(1).std(dim=1)
    assert float(per_image_std.min()) > 0.03
    assert 0.15 < float(images.mean()) < 0.85
    calm = render_builtin(small_config(difficulty=0.0))
    one_per_identity = torch.stack([calm.train.float_images()[calm.train.labels == i][0] for i in range(6)])
    pixel_gaps = (one_per_identity[:, None] - one_per_identity[None]).abs().flatten(2)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    assert float(pixel_gaps.amax(-1)[off_diagonal].min()) > 0.1  # even look-alikes differ visibly somewhere
    assert float(pixel_gaps.mean(-1)[off_diagonal].mean()) > 0.03


# The bytes of a small built-in rendering, the same on every x86-64 machine: rendered in float64 and quantised,
# so neither the CPU's vector kernels nor the thread count reach the data (float32 differed between kernels).
SMALL_RENDERING_SHA256 = "1bdbd917c93f393171f44d0b7059e644638419d6e714201347cffe535d0a784e"
DIGEST_SMALL_RENDERING = """
import hashlib
from lsmia.config import DataConfig
from lsmia.data.synthetic import render_builtin
d = render_builtin(DataConfig(num_identities=4, num_public_identities=2, images_per_identity=6, public_images_per_identity=6))
print(hashlib.sha256(b"".join(s.images.numpy().tobytes() for s in (d.train, d.test, d.public))).hexdigest())
"""


def _cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


@pytest.mark.parametrize(("capability", "threads"), [("default", "1"), ("avx2", "2"), ("avx512", "1")])
def test_the_built_in_data_is_the_same_bytes_with_every_cpu_kernel(capability: str, threads: str) -> None:
    if capability != "default" and capability not in _cpu_flags() and f"{capability}f" not in _cpu_flags():
        pytest.skip(f"this CPU has no {capability}")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": threads}
    done = subprocess.run(
        [sys.executable, "-c", DIGEST_SMALL_RENDERING], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == SMALL_RENDERING_SHA256


@pytest.mark.slow  # 15 s: renders the built-in faces twice
def test_ppa_split_of_the_builtin_data_is_the_global_shuffle() -> None:
    from lsmia.data.base import split_ppa

    data = render_builtin(small_config(split="ppa"))
    stratified = render_builtin(small_config())
    labels = torch.arange(6).repeat_interleave(6)  # rendering order: identity-major
    train, test = split_ppa(36, 0.34, 42)  # int(0.66 * 36) = 23 train
    assert (
        len(test) == 13
        and torch.equal(data.test.labels, labels[test])
        and torch.equal(data.train.labels, labels[train])
    )
    assert data.meta["split"] == "ppa" and "split" not in stratified.meta
    # the same rendering, split otherwise: every image lands on one side
    everything = torch.cat([stratified.train.images, stratified.test.images])
    assert len(everything) == len(data.train) + len(data.test)
    assert sorted(map(hash_image, everything)) == sorted(
        map(hash_image, torch.cat([data.train.images, data.test.images]))
    )


def hash_image(image: torch.Tensor) -> str:
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()
