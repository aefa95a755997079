"""Shared infrastructure: user errors, atomic files, processes and memory, the run folder."""
