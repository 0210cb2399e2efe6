"""Training and export in PyTorch: TTFS and ReLU networks, folding, fine-tuning, quantisation."""
