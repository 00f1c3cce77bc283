"""The use cases: prepare (plan), fit, check, demo, batches. They validate, resolve device,
topology and budget once, and call the floors below."""
