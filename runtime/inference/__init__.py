"""Inference over a loaded model: quantization (quantize.py)."""
