"""Training: objectives (pure functions of logits, hidden states and masks) and the accelerate loop."""
