"""Training: one skeleton every model runs (`trainer`), each model's task on its library's
trainer (masked LM: transformers' `Trainer`; bi-encoder and cross-encoder: sentence-transformers'
trainers), and what they share (`runtime`: device, DDP group, checkpoint key)."""
