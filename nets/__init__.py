"""Networks: layers (linear, conv, norms, MLP, block-linear), distributions, pure functions."""
