"""The `qrerank` command: score, embed (JSON on stdout), bench and serve (HTTP server)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from qrerank.bench import run as bench_run
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH
from qrerank.serving import options as serving

DTYPE_HELP = "auto (the default: bf16 on cuda and on CPUs with AMX or AVX512-BF16, else fp32), float32, bfloat16"


def _engine_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument(
        "--model", default=default_model, help=f"checkpoint directory or hub id (default {default_model})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help=DTYPE_HELP)
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--instruction", default=None)


def _read_texts(given: list[str], path: str | None) -> list[str]:
    """Texts from the command line, or one per line from a file ('-' for stdin)."""
    if path is None:
        return given
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        return given + [line.rstrip("\n") for line in stream]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrerank", description="Fast, recipe-exact Qwen3 rerankers and embedders.")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="rank documents for a query; prints JSON [{index, score, document}]")
    _engine_arguments(score, "Qwen/Qwen3-Reranker-0.6B")
    score.add_argument("query")
    score.add_argument("docs", nargs="*", help="documents (or use --docs-file)")
    score.add_argument("--docs-file", help="one document per line; '-' reads stdin")
    score.add_argument("--top-k", type=int, default=None)

    embed = commands.add_parser("embed", help="embed texts; prints JSON [[float, ...], ...]")
    _engine_arguments(embed, "Qwen/Qwen3-Embedding-0.6B")
    embed.add_argument("texts", nargs="*", help="texts (or use --texts-file)")
    embed.add_argument("--texts-file", help="one text per line; '-' reads stdin")
    embed.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default: the model's)")

    bench = commands.add_parser("bench", help="benchmark against the official transformers recipes")
    bench_run.add_arguments(bench)

    serve = commands.add_parser("serve", help="HTTP server: OpenAI, Cohere/Jina, DeepInfra and TEI APIs (extra: serve)")
    _serve_arguments(serve)
    return parser


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="reranker checkpoint directory or hub id")
    parser.add_argument("--embedding-model", default=None, help="embedding checkpoint directory or hub id")
    parser.add_argument("--served-model-name", default=None, help="the reranker's name for clients (default: --model)")
    parser.add_argument(
        "--served-embedding-model-name",
        default=None,
        help="the embedder's name for clients (default: --embedding-model)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help=DTYPE_HELP)
    parser.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per input: longer ones get 413 or are cut"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--auto-truncate", action="store_true", help="cut over-long inputs as the recipe does")
    parser.add_argument("--max-body-bytes", type=int, default=serving.DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--max-inputs", type=int, default=serving.DEFAULT_MAX_INPUTS, help="documents/inputs per request"
    )
    parser.add_argument("--request-timeout", type=float, default=serving.DEFAULT_REQUEST_TIMEOUT_S, help="seconds")
    parser.add_argument("--max-wait-ms", type=float, default=serving.DEFAULT_MAX_WAIT_MS, help="micro-batching wait")
    parser.add_argument("--max-batch-sequences", type=int, default=serving.DEFAULT_MAX_BATCH_SEQUENCES)
    parser.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish requests on shutdown")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _serve(args: argparse.Namespace) -> int:
    try:  # the `serve` extra
        from qrerank.serving.app import create_app
        from qrerank.serving.server import serve
    except ImportError as err:
        print(f"qrerank serve: error: {err.name} is missing; pip install 'qrerank[serve]'", file=sys.stderr)
        return 2
    from qrerank import Embedder, Reranker

    engine = dict(
        device=args.device, dtype=args.dtype, max_length=args.max_length, max_batch_tokens=args.max_batch_tokens
    )
    try:
        if args.model is None and args.embedding_model is None:
            raise ValueError("give --model (a reranker), --embedding-model, or both")
        options = serving.ServerOptions(
            reranker_name=None if args.model is None else args.served_model_name or args.model,
            embedder_name=None
            if args.embedding_model is None
            else args.served_embedding_model_name or args.embedding_model,
            api_key=args.api_key,
            max_body_bytes=args.max_body_bytes,
            max_inputs=args.max_inputs,
            auto_truncate=args.auto_truncate,
            request_timeout_s=args.request_timeout,
            max_wait_ms=args.max_wait_ms,
            max_batch_sequences=args.max_batch_sequences,
        )
        reranker = None if args.model is None else Reranker(args.model, **engine)
        embedder = None if args.embedding_model is None else Embedder(args.embedding_model, **engine)
        app = create_app(reranker, embedder, options)
    except (TypeError, ValueError, OSError) as err:
        print(f"qrerank serve: error: {err}", file=sys.stderr)
        return 2
    serve(app, host=args.host, port=args.port, graceful_timeout_s=args.graceful_timeout, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        bench_run.run(args)
        return 0
    if args.command == "serve":
        return _serve(args)
    from qrerank import Embedder, Reranker

    engine = dict(
        device=args.device, dtype=args.dtype, max_length=args.max_length, max_batch_tokens=args.max_batch_tokens
    )
    try:
        if args.command == "score":
            docs = _read_texts(args.docs, args.docs_file)
            result = Reranker(args.model, **engine).rank(
                args.query, docs, top_k=args.top_k, instruction=args.instruction, return_documents=True
            )
        else:
            texts = _read_texts(args.texts, args.texts_file)
            result = Embedder(args.model, **engine).embed(texts, instruction=args.instruction, dim=args.dim).tolist()
    except (TypeError, ValueError, OSError) as err:
        print(f"qrerank {args.command}: error: {err}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
