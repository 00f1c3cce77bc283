"""The Keras runtime that fit's loop and a trial child share: the feed, callbacks, checkpoints,
strategies."""
