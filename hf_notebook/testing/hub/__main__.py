"""Serve a local Hub: ``python -m hf_notebook.testing.hub --root DIR [--port N] [--host H] [--token T] [--no-xet]``.

Big files are served and taken through Xet storage, as on the Hub, so clients run with their
defaults (hf_xet installed or not). Its CAS is a second port on the same host, and pushes write
into ``DIR/.xet-cas/`` directly (hf_xet's local CAS): clients must run on this machine.
``--no-xet`` serves as a Hub without Xet storage: plain HTTP downloads, uploads through LFS only.

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
    parser.add_argument("--no-xet", action="store_true", help="serve as a Hub without Xet storage (LFS only)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with HubServer(args.root, host=args.host, port=args.port, token=args.token) as server:
        server.xet = not args.no_xet
        print(server.endpoint, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
