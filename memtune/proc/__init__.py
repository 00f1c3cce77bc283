"""This process: child processes, signals, the heap, failpoints, importing TensorFlow, progress
events, output paths, the memory sampler."""
