"""Stage 2, models: R3D-18, the heads shared by pretext tasks and fine-tuning, device
placement, and the checkpoint reader."""
