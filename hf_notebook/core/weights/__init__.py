"""Weights on disk: load them into place, save them as a model folder."""
