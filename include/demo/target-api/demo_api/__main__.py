"""`python -m demo_api [--host H] [--port P]`: serve the API with uvicorn.

uvicorn's own `server: uvicorn` header is turned off because the app sets its
own banner; the defaults come from TARGET_API_HOST / TARGET_API_PORT.
"""

from __future__ import annotations

import argparse
import os

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="demo_api")
    parser.add_argument("--host", default=os.environ.get("TARGET_API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("TARGET_API_PORT", "8000")))
    args = parser.parse_args()
    uvicorn.run(
        "demo_api.main:app",
        host=args.host,
        port=args.port,
        server_header=False,
        proxy_headers=False,
        log_level=os.environ.get("TARGET_API_LOG_LEVEL", "info"),
    )


if __name__ == "__main__":
    main()
