"""The pipeline's memory-shaping constants, shared by the pipelines and the pure plan."""

DEFAULT_BUCKETS = 8  # length buckets of a None-length input unless --buckets says
BLOCK_ROWS = 8192  # rows a pipeline reads and pads at a time (or the batch, if larger)
STREAM_QUEUE_BATCHES = 4  # padded batches prefetched ahead of training
WORKERS = 2  # parallel batch builders
INDEX_BYTES_PER_SAMPLE = 8  # in-memory mode's per-epoch permutation (int64)
# Length buckets: every row's bucket (int8), the epoch's batches (int64 rows) and the
# permutation they are cut from while an epoch's order is built.
BUCKET_INDEX_BYTES_PER_SAMPLE = 24
# Reading one Parquet row group and padding it peaks at about this many times the group's
# uncompressed size (measured: 100,000 rows × 256 float32, 98 MiB, peaked 615 MiB: Arrow's
# read buffers, the flattened values, the padded block). Each batch builder and the
# read-ahead may be reading one at once.
DECODE_FACTOR = 6
# Trial peaks of one batch differ between runs in one period by this much, or this share
# of the peak if more: the drift anchor's band, and the ± beside a measured prediction.
NOISE_FLOOR = 16 * 1024**2
NOISE_SHARE = 0.03
