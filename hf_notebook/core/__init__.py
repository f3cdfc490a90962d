"""The plain-Python core: no IPython or ipywidgets imports, torch imported lazily."""
