"""Training: the feature cache, triplet data and the one training loop for frozen and fine-tune modes."""
