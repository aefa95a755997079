"""Stage 1, data: annotation readers (one module per official format), screening, video
decoding, frame samplers, transforms and presets, torch datasets, client partitions."""
