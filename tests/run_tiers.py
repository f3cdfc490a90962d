"""``make test``: the suite in two pytest processes side by side where there are two cores or more.

The real-browser tier and the notebooks' execution (``-m browser``, ``tests/test_notebooks.py``) spend
about a third of their time waiting on a kernel, a Jupyter server or Chromium; the rest of the suite
keeps the cores busy meanwhile. On one core, with ``--serial`` or with a ``-m`` of the caller's, it is one
plain pytest run. Other arguments go to both runs (a selection that leaves one of them nothing to run is fine). The main run's
output streams; the other's is printed when it ends. The exit status is the first failing run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

NO_TESTS = 5  # pytest's exit status when a selection leaves nothing to run
SIDE = ["-m", "browser or notebooks"]
MAIN = ["-m", "not (browser or notebooks)"]


def main(args: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    if "--serial" in args or "-m" in args or (os.cpu_count() or 1) < 2:
        return subprocess.call(pytest + [a for a in args if a != "--serial"])
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as side_log:
        side = subprocess.Popen(pytest + SIDE + args, stdout=side_log, stderr=subprocess.STDOUT)
        try:
            main_status = subprocess.call(pytest + MAIN + args)
            side_status = side.wait()
        finally:
            if side.poll() is None:
                side.terminate()
                side.wait()
        side_log.seek(0)
        print(f"\n===== the browser tier and the notebooks, run alongside ({time.monotonic() - started:.0f} s "
              f"for both runs) =====", flush=True)
        sys.stdout.write(side_log.read())
    statuses = [s for s in (main_status, side_status) if s != NO_TESTS]
    return next((s for s in statuses if s != 0), 0 if statuses else NO_TESTS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
