"""Is the challenger better? Ranking metrics, paired significance, simulated interleaving and
the promotion gate."""
