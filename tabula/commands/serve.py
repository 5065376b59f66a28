"""Serve a model over HTTP with the OpenAI API, batching requests continuously.

    tabula serve RUN_DIR|HF_EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--max-batch N] [--max-queue N]
                 [--quantize int8|int4] [--api-key KEY]

Endpoints: POST /v1/completions and /v1/chat/completions (the model's chat template; `stream: true` as
server-sent events), GET /v1/models, /health and /metrics (Prometheus). The official `openai` client works
against it: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY or "none")`.

One scheduler loop decodes every running sequence a token at a time and lets new requests join the batch
at every step (their prompts prefilled between two steps) and finished ones leave it. The KV cache is handed
out in blocks of 16 tokens from a pool (--cache-tokens, default max-batch full contexts): a request waits
while the pool is short, a running sequence that cannot grow preempts the newest one (recomputed later),
and a request that could never fit is refused (400). The blocks are the full-attention layers' cache memory
(paged), allocated once at the pool's size. A full queue answers 429; a client that disconnects
frees its sequence's blocks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabula.report import positive_int

HELP = "serve a run's or a Hugging Face export's model with an OpenAI-compatible HTTP API (continuous batching)"


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (a bad one is one clear line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, found {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, found {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR|HF_EXPORT_DIR",
                        help="a run directory (its newest checkpoint), a checkpoint folder, a Hugging Face folder (tabula export --format hf), "
                             "or a spec file (its seed-initialised model, for trying the server)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, e.g. in a container)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to listen on (0-65535; 0: any free port)")
    parser.add_argument("--name", default=None, help="the model's name in the API (default: the folder's name)")
    parser.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together at most")
    parser.add_argument("--max-queue", type=positive_int, default=64, help="requests waiting for a batch slot at most; more are answered 429")
    parser.add_argument("--cache-tokens", type=positive_int, default=None,
                        help="the KV cache pool's size in tokens (default: max-batch x the model's context)")
    parser.add_argument("--quantize", choices=["int8", "int4"], default=None, help="weight-only quantization of the linear layers")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/* (default: open)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda where there is one)")


def run(args) -> int:
    import torch

    from tabula.runtime.errors import TabulaError
    from tabula.schemas.errors import SpecErrors

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    source = Path(args.source)
    try:
        from tabula.runtime.inference import load_generator
        from tabula.runtime.serving.scheduler import SchedulerConfig
        from tabula.runtime.serving.server import build_server, chat_template_of

        # --quantize: load_generator checks the device before loading, then quantizes the weights
        # (runtime/inference/quantize.py; QuantizationUnsupported is a RunInputError: one line, exit 2)
        generator = load_generator(source, device=device, quantize=args.quantize)
        template = chat_template_of(source)
        config = SchedulerConfig(max_batch=args.max_batch, max_queue=args.max_queue, cache_tokens=args.cache_tokens)
        name = args.name or (source.stem if source.is_file() else source.resolve().name)
        server = build_server(generator, name, template=template, config=config, api_key=args.api_key)
    except SpecErrors as errors:
        from tabula.report import print_errors

        print_errors(errors.errors)
        return 2
    except (TabulaError, ValueError, RuntimeError) as error:
        sys.stderr.write(f"tabula serve: {error}\n")
        return 2
    import socket

    import uvicorn

    try:
        sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    except OSError as error:
        server.scheduler.close()
        sys.stderr.write(f"tabula serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}\n")
        return 2
    pool = server.scheduler.pool
    print(f"serving {server.model.name} on http://{args.host}:{args.port}/v1 ({device}; max batch {args.max_batch}, "
          f"queue {args.max_queue}, cache pool {pool.n_blocks} blocks of {pool.block_size} tokens)", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(server.app, log_level="warning")).run(sockets=[sock])
    finally:
        server.scheduler.close()
    return 0
