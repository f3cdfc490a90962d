"""The plain-Python core: no IPython, ipywidgets or UI import; torch and transformers imported lazily.

It returns data (``LoadResult``, ``Plan``, ``SaveResult``, ...) and emits progress events; how a result is
shown is registered by the extension (``ui/__init__.py``). Where things go: a user action is a method of
``session.Session`` (the face the magics and Python users call: models, lock file, defaults), which calls
the module that does the work: ``api.py`` (the load pipeline, plan, re-dispatch), ``unload.py``,
``hub/push.py``, ``hub/bundle.py``, ``weights/save.py``; an option in ``option_table.py`` and
``options.py``; an error class in ``errors.py``; a private name of a dependency in ``compat.py``.
"""
