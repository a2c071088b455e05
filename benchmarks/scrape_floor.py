"""The scrape-latency floor of this machine: an aiohttp server that does nothing but return a fixed
body the size of gpumon's gzipped exposition, scraped exactly as gpumon is.

    python -m benchmarks.scrape_floor PORT [BODY_BYTES]

The suite starts it as a process of its own (like the exporters) and reports its p50/p99 beside
gpumon's: what is left of gpumon's scrape latency above this floor is gpumon's, the rest is the
machine (the wake-up latency of idle vCPUs, the client sharing the cores) and aiohttp.
"""

from __future__ import annotations

import os
import sys

from aiohttp import web


def app(body_bytes: int) -> web.Application:
    body = os.urandom(body_bytes)  # incompressible, as a gzipped exposition is

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    return application


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    port, body_bytes = int(args[0]), int(args[1]) if len(args) > 1 else 8000
    web.run_app(app(body_bytes), host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


if __name__ == "__main__":
    main()
