"""The run report: facts gathered from a run's outputs, rendered to a static HTML page."""
