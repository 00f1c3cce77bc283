"""The pipeline's memory-shaping constants, shared by the pipelines and the pure plan."""

DEFAULT_BUCKETS = 8  # length buckets of a None-length input unless --buckets says
# A target whose variation the length explains this share of or more turns default buckets
# off: batches of one length would each hold mostly one kind of target, and even a few
# percent cost a GRU in the bucket bench most of what it learned without buckets.
LENGTH_DEPENDENCE = 0.02
# Each length bucket trains in at least this many steps an epoch (when it has the rows), so
# no bucket is one giant step.
MIN_BUCKET_STEPS = 4
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
