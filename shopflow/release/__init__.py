"""Which model serves: the registry (champion and promotion log), promotion, deployment and
rollback."""
