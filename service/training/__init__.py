"""Synthetic data, training and evaluation of the demo models."""
