"""Training stages (alignment pre-training, joint SFT, MR-GRPO) over the inference model classes."""
