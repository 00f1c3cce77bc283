"""How a training process's peak memory grows with the batch: the analytic prior, trials in a
watched child, the search, the trial cache, and their wiring."""
