"""The user's model: loading it, its signature, and what planning reads of it (in a child
process)."""
