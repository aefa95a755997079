"""The run's settings: checks of the composed Hydra config, and the typed values each stage receives."""
