from typing import TypeVar

import torch
import torch.nn as nn

from lsmia.models.classifiers import build_classifier
from lsmia.models.fusion import inference_copy
from lsmia.models.generator import DCGANPrior, Generator

M = TypeVar("M", bound=nn.Module)


def _randomise_bn(model: M) -> M:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None  # track_running_stats
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_folded_classifiers_match_the_originals():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    for arch in ("smallresnet", "smallvgg", "resnet18"):
        model = _randomise_bn(build_classifier(arch, 5, 32, width=8))
        fast = inference_copy(model, torch.device("cpu"))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()), arch
        assert torch.allclose(fast(x), model(x), atol=1e-4), arch
        assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_folded_prior_matches_and_keeps_its_interface():
    torch.manual_seed(0)
    prior = DCGANPrior(_randomise_bn(Generator(16, 32, 8)))
    fast = inference_copy(prior, torch.device("cpu"))
    z = torch.randn(3, 16)
    assert fast.latent_dim == 16 and fast.image_size == 32
    assert torch.allclose(fast(z), prior(z), atol=1e-5)
