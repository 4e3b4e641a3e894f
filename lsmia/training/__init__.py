"""Training loops: classifiers (targets, evaluation model) and the GAN prior."""
