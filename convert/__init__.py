"""PyTorch Chatterbox checkpoints -> converted MLX model dir. The only package that knows torch names."""
