"""The plain-Python core: no IPython, ipywidgets or UI import; torch and transformers imported lazily.

It returns data (``LoadResult``, ``Plan``, ``SaveResult``, ...) and emits progress events; how a result is
shown is registered by the extension (``ui/__init__.py``). Where things go: an action's entry point in
``api.py`` (load, plan, re-dispatch) or its own module (``unload.py``, ``hub/push.py``, ``hub/bundle.py``,
``weights/save.py``); an option in ``option_table.py`` and ``options.py``; an error class in ``errors.py``;
a private name of a dependency in ``compat.py``.
"""
