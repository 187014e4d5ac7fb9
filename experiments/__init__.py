"""A/B experiments across models (traffic splitting, feedback, statistics)."""
