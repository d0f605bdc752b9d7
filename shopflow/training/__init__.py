"""Training: the loop every model shares (device, precision, checkpoints, DDP) and one task per
model (masked LM, bi-encoder, cross-encoder) plugged into it."""
