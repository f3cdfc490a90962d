"""Placement: plan a device map from headers, measure where weights live, edit and re-dispatch it."""
