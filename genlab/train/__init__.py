"""The one training loop, distributed helpers and checkpoints."""
