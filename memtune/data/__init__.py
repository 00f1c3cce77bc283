"""The user's data: sources and shard order, cells, padding, the one-pass scan, the footprint of
one padded sample, and the batch sources that read it (in memory or streaming)."""
