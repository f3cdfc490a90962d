"""Serve a local Hub: ``python -m hf_notebook.testing.hub --root DIR [--port N] [--host H] [--token T]``.

Clients upload weights through the LFS batch API, which needs ``HF_HUB_DISABLE_XET=1`` on their side;
``--regular-uploads`` takes every file inside the commit instead (for clients with Xet enabled).

The first line of stdout is the endpoint URL (put it in ``HF_ENDPOINT``); SIGINT or SIGTERM
stops the server and exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import threading

from .server import HubServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_notebook.testing.hub", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--token", help="token that private repos and writes require (default: no checks)")
    parser.add_argument(
        "--regular-uploads", action="store_true",
        help='answer "regular" for every file at preupload, so no upload goes through LFS (or Xet)',
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with HubServer(args.root, host=args.host, port=args.port, token=args.token) as server:
        server.preupload_lfs = not args.regular_uploads
        print(server.endpoint, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
