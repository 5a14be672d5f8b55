"""`python app.py` starts SDAR Studio (also the Hugging Face Spaces entry point).

    python app.py [--model assets/models/sdar-tiny] [--host 127.0.0.1] [--port 7860] [--share]

Gradio's own variables apply too (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, GRADIO_SHARE, ...); a flag given
on the command line wins over them.
"""
from __future__ import annotations

import argparse
import os

from app.registry import DEFAULT_MODEL
from app.ui import LAUNCH_KWARGS, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SDAR Studio: chat with, visualise and race SDAR models")
    parser.add_argument("--model", default=os.environ.get("SDAR_MODEL", DEFAULT_MODEL),
                        help="checkpoint folder or hub id selected at start (default: %(default)s)")
    parser.add_argument("--host", default=None, help="address to serve on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", default=None, help="make a public gradio.live link")
    args = parser.parse_args(argv)
    demo = build_app(default_model=args.model)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_KWARGS)


if __name__ == "__main__":
    main()
