"""Corpora and data loading for pre-training, fine-tuning and evaluation."""
