"""Training-time defenses against model inversion, compared with label smoothing at equal accuracy.

- ``mid``: MID, a variational information bottleneck before the head (Wang et al., AAAI 2021);
- ``bido``: BiDO-HSIC, dependence penalties on the hidden representations (Peng et al., KDD 2022);
- ``tl``: TL-DMI, public pre-training with the first blocks frozen (Ho et al., CVPR 2024);
- ``compare``: fronts of test accuracy vs worst-case attack accuracy, and the equal-accuracy table.

``target.defense`` (lsmia.config.DefenseConfig) chooses one; ``lsmia.defenses.factory.build_defense`` wires it into
``lsmia.training.classifier``. This file imports nothing, so ``lsmia.models.classifiers`` can import ``mid``.
"""
