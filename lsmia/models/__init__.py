"""Classifiers, the GAN prior and the forward passes every stage shares."""
