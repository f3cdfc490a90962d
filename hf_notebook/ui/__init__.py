"""Renderers: ipywidgets panels with a plain-text fallback for terminal IPython."""
