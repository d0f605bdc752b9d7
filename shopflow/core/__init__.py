"""Plumbing every part shares: typed params, errors users can act on, atomic outputs, paths,
progress lines and child processes."""
