"""Trained models served by Triton: training, reference forward passes and export to triton_models/."""
