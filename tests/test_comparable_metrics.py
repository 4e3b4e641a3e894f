"""The metrics PPA reports with published networks: FID on pytorch-fid's FID Inception (``fid_tf_inception``) and
δ_face on FaceNet (``delta_face``), both from local weight files only. The networks run with random weights here
(the released files cannot be downloaded); tiny images and two or three of them per set keep the tests short."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from lsmia.attack.result import AttackResult
from lsmia.config import MetricsConfig
from lsmia.data.base import ImageSet
from lsmia.errors import LsmiaError
from lsmia.metrics.delta import delta_eval, delta_face
from lsmia.metrics.evaluate import comparable_metrics, require_metric_weights
from lsmia.metrics.fid import fid_inception_features, frechet_distance, load_fid_inception
from lsmia.models.facenet import InceptionResnetV1, fixed_standardisation, load_facenet
from lsmia.models.published import FACENET, FID_INCEPTION
from lsmia.stages.evaluate import stage_evaluate

FIXTURE = Path(__file__).parent / "data" / "facenet_vggface2_state_dict.json"


def tiny_images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def random_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception built as ``pytorch_fid.inception.fid_inception_v3`` builds it, minus the download:
    torchvision's Inception-v3 (1008 classes, no aux head) with the FID blocks patched in. Kaiming-normal convolutions
    keep the random network's pool features of order 1 (PyTorch's default init shrinks them to ~1e-8)."""
    from pytorch_fid import inception as pfi

    torch.manual_seed(0)
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for pytorch-fid's release: a random FID Inception's state dict under the released file name."""
    path = tmp_path_factory.mktemp("fid") / FID_INCEPTION.file
    torch.save(random_fid_inception().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def facenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("facenet") / FACENET.file
    torch.save(InceptionResnetV1().state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every way out to the network raises; torch hub's cache is an empty folder that must stay untouched."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    hub = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    return hub


def one_line_error(call, *args) -> str:
    with pytest.raises(LsmiaError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- FID on pytorch-fid's FID Inception


def test_fid_inception_loads_from_the_local_file_without_the_network(fid_weights: Path, offline: Path) -> None:
    from pytorch_fid import inception as pfi

    download = pfi.load_state_dict_from_url
    net = load_fid_inception(fid_weights)
    assert isinstance(net, pfi.InceptionV3) and not net.training
    assert net.resize_input and net.normalize_input and net.output_blocks == [3]
    saved = torch.load(fid_weights, weights_only=True)
    assert torch.equal(net.blocks[3][2].branch_pool.conv.weight, saved["Mixed_7c.branch_pool.conv.weight"])
    assert pfi.load_state_dict_from_url is download  # pytorch-fid's own loader is back in place
    assert not offline.exists()  # no hub cache folder was created or read


def test_fid_tf_inception_is_zero_for_a_set_with_itself_and_positive_against_another(fid_weights: Path) -> None:
    torch.set_num_threads(1)
    net = load_fid_inception(fid_weights)
    a, b = tiny_images(2, seed=1), tiny_images(2, seed=2) // 3
    feats_a, feats_b = fid_inception_features(net, a), fid_inception_features(net, b)
    assert feats_a.shape == (2, 2048) and feats_a.abs().mean() > 1e-2  # features of order 1, not vanishing
    assert frechet_distance(feats_a, feats_a.clone()) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(feats_a, feats_b) > 1.0
    # the input is [0, 1], as pytorch-fid expects (uint8 and float give the same features)
    assert torch.allclose(fid_inception_features(net, a.float() / 255), feats_a, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # inside pytorch-fid
def test_frechet_distance_is_pytorch_fids() -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 5, generator=gen).double()
    b = torch.randn(50, 5, generator=gen).double() @ torch.randn(5, 5, generator=gen).double() + 1.0
    stats = [(x.numpy().mean(axis=0), np.cov(x.numpy(), rowvar=False)) for x in (a, b)]
    assert frechet_distance(a, b) == pytest.approx(calculate_frechet_distance(*stats[0], *stats[1]), rel=1e-9)


def test_missing_or_foreign_fid_weights_are_one_line_errors(tmp_path: Path, offline: Path) -> None:
    message = one_line_error(load_fid_inception, tmp_path / "nothing.pth")
    assert "metrics.fid_inception_path" in message and "does not exist" in message
    assert FID_INCEPTION.file in message and "github.com/mseitzer/pytorch-fid/releases" in message
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    message = one_line_error(load_fid_inception, tmp_path / "foreign.pth")
    assert "does not hold pytorch-fid's FID Inception weights" in message and FID_INCEPTION.file in message
    torch.save([1, 2], tmp_path / "list.pth")
    assert "does not hold" in one_line_error(load_fid_inception, tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    assert "cannot be read" in one_line_error(load_fid_inception, tmp_path / "garbage.pth")
    assert not offline.exists()


# --------------------------------------------------------------------------- FaceNet and δ_face


def test_facenet_has_facenet_pytorchs_keys_and_shapes() -> None:
    """tests/data/facenet_vggface2_state_dict.json lists every key and shape of facenet-pytorch 2.6.0's
    InceptionResnetV1 as ``InceptionResnetV1(pretrained='vggface2')`` builds it before loading
    20180402-114759-vggface2.pt with load_state_dict (strict): the model of the unpacked wheel
    (``pip download --no-deps facenet-pytorch==2.6.0``), instantiated with ``InceptionResnetV1()`` and given
    ``.logits = nn.Linear(512, 8631)`` as the pretrained path does; {key: list(shape)} in state-dict order. Equal keys
    and shapes are what a strict load of the released file needs."""
    expected = json.loads(FIXTURE.read_text())["state_dict_shapes"]
    ours = {key: list(value.shape) for key, value in InceptionResnetV1().state_dict().items()}
    assert list(ours) == list(expected)
    assert ours == expected


def test_facenet_loads_strictly_from_the_local_file(facenet_weights: Path, offline: Path) -> None:
    net = load_facenet(facenet_weights)
    saved = torch.load(facenet_weights, weights_only=True)
    conv = net.get_submodule("repeat_2.9.branch1.2.conv")
    assert isinstance(conv, nn.Conv2d)
    assert not net.training and torch.equal(conv.weight, saved["repeat_2.9.branch1.2.conv.weight"])
    assert not offline.exists()


def test_missing_or_foreign_facenet_weights_are_one_line_errors(tmp_path: Path) -> None:
    message = one_line_error(load_facenet, tmp_path / "nothing.pt")
    assert "metrics.facenet_path" in message and "does not exist" in message
    assert FACENET.file in message and "github.com/timesler/facenet-pytorch/releases" in message
    torch.save({"conv2d_1a.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pt")  # e.g. a stem only
    message = one_line_error(load_facenet, tmp_path / "partial.pt")
    assert "does not hold facenet-pytorch's FaceNet VGGFace2 weights" in message and FACENET.file in message
    torch.save({"logits.weight": torch.zeros(10, 512)}, tmp_path / "other.pt")  # another head: wrong shape
    assert "does not hold" in one_line_error(load_facenet, tmp_path / "other.pt")


def test_facenet_sees_standardised_160_px_faces_and_embeds_on_the_unit_sphere() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = InceptionResnetV1().eval()
    seen: list[torch.Tensor] = []
    net.conv2d_1a.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    from lsmia.metrics.features import extract_features

    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 32, 32)
    emb = extract_features(net, images)
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert seen[0].shape == (2, 3, 160, 160)
    assert torch.allclose(seen[0][0], torch.full((3, 160, 160), -127.5 / 128))  # pixel 0
    assert torch.allclose(seen[0][1], torch.full((3, 160, 160), 127.5 / 128))  # pixel 255
    assert fixed_standardisation(torch.tensor([0.5])).item() == pytest.approx(0.0)


class MeanColour(nn.Module):
    """A stand-in embedding: each image's mean value per channel in [0, 1] (no image_size: no resizing)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # extract_features finds the device from a parameter

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def flat(values: list[tuple[int, int, int]]) -> torch.Tensor:
    """One uint8 image of 2x2 pixels per colour."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 3, 1, 1).expand(-1, 3, 2, 2).contiguous()


def test_delta_face_by_hand() -> None:
    # class 0 trains on black and white, class 1 on mid grey; samples: near-black (target 0), white (target 0),
    # black (target 1: its only reference is grey, black's own class does not count)
    train = flat([(0, 0, 0), (255, 255, 255), (51, 51, 51)])
    train_labels = torch.tensor([0, 0, 1])
    samples = flat([(51, 0, 0), (255, 255, 255), (0, 0, 0)])
    targets = torch.tensor([0, 0, 1])
    # squared L2 in mean-colour space to the nearest same-class image: 0.2² (to black), 0 (to white), 3 x 0.2² (grey)
    expected = (0.04 + 0.0 + 0.12) / 3
    assert delta_face(MeanColour(), samples, targets, train, train_labels) == pytest.approx(expected, rel=1e-6)
    # and it is δ_eval's computation, on the other network's features
    feats = MeanColour().features
    same = delta_eval(feats(samples.float() / 255), targets, feats(train.float() / 255), train_labels)
    assert delta_face(MeanColour(), samples, targets, train, train_labels) == pytest.approx(same, rel=1e-12)


# --------------------------------------------------------------------------- the evaluation stage


def tiny_attack(train: ImageSet) -> AttackResult:
    final = torch.cat([train.images[train.labels == t][:2] for t in (0, 1)])
    targets = torch.tensor([0, 0, 1, 1])
    return AttackResult(
        targets=[0, 1],
        all_latents=torch.zeros(4, 2),
        all_images=final,
        all_targets=targets,
        final_latents=torch.zeros(4, 2),
        final_images=final,
        final_targets=targets,
        final_scores=torch.full((4,), 0.5),
    )


def test_comparable_metrics_are_absent_without_their_weights() -> None:
    train = ImageSet(tiny_images(4, seed=0), torch.tensor([0, 0, 1, 1]))
    assert comparable_metrics(MetricsConfig(), tiny_attack(train), train, "cpu") == {}
    require_metric_weights(MetricsConfig())  # nothing configured: nothing required


@pytest.mark.slow
def test_comparable_metrics_with_both_weight_files(fid_weights: Path, facenet_weights: Path, offline: Path) -> None:
    torch.set_num_threads(1)
    train = ImageSet(tiny_images(4, seed=0), torch.tensor([0, 0, 1, 1]))
    cfg = MetricsConfig(fid_inception_path=fid_weights, facenet_path=facenet_weights)
    metrics = comparable_metrics(cfg, tiny_attack(train), train, "cpu")
    assert set(metrics) == {"fid_tf_inception", "delta_face"}
    # the final samples are the training images themselves: both sets are equal, each sample is its own nearest
    assert metrics["fid_tf_inception"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["delta_face"] == pytest.approx(0.0, abs=1e-6)
    assert not offline.exists()


def test_a_missing_weight_file_fails_the_evaluation_before_any_loading(tmp_path: Path) -> None:
    from lsmia.config import Config

    cfg = Config().model_copy(deep=True)
    cfg.metrics.facenet_path = tmp_path / "models" / FACENET.file
    missing = tmp_path / "no_data_yet.pt"  # would be the first error if the weights were checked late
    with pytest.raises(LsmiaError, match=rf"metrics.facenet_path .*does not exist: place .*{FACENET.file}"):
        stage_evaluate(cfg, missing, missing, missing, tmp_path, tmp_path / "m.json", torch.device("cpu"), 0.0, 0)
    cfg.metrics.facenet_path = None
    cfg.metrics.fid_inception_path = tmp_path / FID_INCEPTION.file
    with pytest.raises(LsmiaError, match=rf"metrics.fid_inception_path .*{FID_INCEPTION.file}"):
        require_metric_weights(cfg.metrics)
