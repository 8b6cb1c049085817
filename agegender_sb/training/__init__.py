"""What the training recipe's YAML names: data helpers, losses, metrics, outputs."""
