"""memtune's Keras callbacks, one per module. Importing one loads Keras (quietly)."""
