"""Stage 6, downstream evaluation of a backbone: retrieval, fine-tuning, and both together."""
