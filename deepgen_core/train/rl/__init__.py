"""Stage 3: MR-GRPO reinforcement learning (reference notes §6)."""
