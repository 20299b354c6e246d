"""Evaluation: generative perplexity and entropy of text samples, image metrics, budget sweeps."""
