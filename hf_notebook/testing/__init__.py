"""Test and demo helpers: a local Hub stand-in and tiny real-architecture models."""
