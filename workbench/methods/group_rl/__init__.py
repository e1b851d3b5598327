"""Group RL: GRPO and its variants (module.py: the LightningModule; advantages.py, losses.py: pure pieces)."""
