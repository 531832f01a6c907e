"""The networks: the registry of architectures and weights, reading checkpoint files, resolving and loading
weights, the model, its fused CPU path, preprocessing, devices and inference."""
