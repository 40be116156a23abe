"""Generative priors for the GIA-L attacks: training a DCGAN on the adversary's auxiliary data."""

from gradleak.generative.train import GeneratorTraining, train_generator

__all__ = ["GeneratorTraining", "train_generator"]
