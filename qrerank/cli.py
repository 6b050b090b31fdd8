"""The `qrerank` command: score, embed (JSON on stdout), bench and serve (HTTP server)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from qrerank.bench import run as bench_run
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH
from qrerank.prompts import SPECIAL_TOKENS
from qrerank.serving import options as serving

_MAX_LENGTH_HELP = f"default: {DEFAULT_MAX_LENGTH}, or the model's max_position_embeddings when smaller"
DTYPE_HELP = "auto (the default: bf16 on cuda and on CPUs with AMX or AVX512-BF16, else fp32), float32, bfloat16"


def _engine_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument(
        "--model", default=default_model, help=f"checkpoint directory or hub id (default {default_model})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help=DTYPE_HELP)
    parser.add_argument("--max-length", type=int, default=None, help=_MAX_LENGTH_HELP)
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--instruction", default=None)
    _special_tokens_argument(parser)


def _special_tokens_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--special-tokens",
        choices=SPECIAL_TOKENS,
        default="parse",
        help="parse: control tokens such as <|im_end|> written in user text act as such (the official recipe); "
        "plain: user text is tokenized as ordinary text (default parse)",
    )


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
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help=DTYPE_HELP)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help=f"tokens per input: longer ones get 413 or are cut; {_MAX_LENGTH_HELP}",
    )
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    _special_tokens_argument(parser)
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
    _api_arguments(parser)
    _serve_guard_arguments(parser)


def _api_arguments(parser: argparse.ArgumentParser) -> None:
    """How the APIs name the models, which fields they take, and the prompts they serve."""
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the reranker's names for clients, the first one answered back (default: --model)",
    )
    parser.add_argument(
        "--served-embedding-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the embedder's names for clients, the first one answered back (default: --embedding-model)",
    )
    parser.add_argument(
        "--accept-any-model-name",
        action="store_true",
        help="answer a request naming an unknown model with the served model of that kind instead of 404",
    )
    parser.add_argument(
        "--strict-fields", action="store_true", help="refuse (422) body fields the API does not take, not ignore them"
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="a prompt that prompt_name selects: TEXT is put before each input (repeatable)",
    )
    parser.add_argument(
        "--default-query-instruction",
        default=serving.DEFAULT_QUERY_INSTRUCTION,
        help="the Qwen3 instruction of queries sent as Cohere input_type search_query",
    )


def _api_options(args: argparse.Namespace) -> dict[str, object]:
    """The ServerOptions fields of `_api_arguments`."""
    prompts = {}
    for given in args.prompt:
        name, equals, text = given.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--prompt takes NAME=TEXT, got {given!r}")
        prompts[name] = text
    reranker = None if args.model is None else (args.served_model_name or [args.model])
    embedder = None if args.embedding_model is None else (args.served_embedding_model_name or [args.embedding_model])
    return dict(
        reranker_name=None if reranker is None else reranker[0],
        reranker_aliases=() if reranker is None else tuple(reranker[1:]),
        embedder_name=None if embedder is None else embedder[0],
        embedder_aliases=() if embedder is None else tuple(embedder[1:]),
        accept_any_model_name=args.accept_any_model_name,
        strict_fields=args.strict_fields,
        prompts=prompts,
        default_query_instruction=args.default_query_instruction,
    )


API_KEY_ENV = "QRERANK_API_KEY"


def _serve_guard_arguments(parser: argparse.ArgumentParser) -> None:
    """Who may call the server, and how many connections it holds for how long."""
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        help=f"require 'Authorization: Bearer KEY' on every route but /health; repeat for several keys. Visible "
        f"to every user in `ps`: prefer --api-key-file or the {API_KEY_ENV} environment variable",
    )
    parser.add_argument("--api-key-file", default=None, help="a file of API keys, one per line")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=serving.DEFAULT_MAX_CONNECTIONS,
        help="open client connections; more are answered 503 at once",
    )
    limits = serving.ConnectionLimits()
    parser.add_argument(
        "--idle-timeout", type=float, default=limits.idle_timeout_s, help="seconds a connection may wait for a request"
    )
    parser.add_argument(
        "--header-timeout", type=float, default=limits.header_timeout_s, help="seconds to send a request's headers"
    )
    parser.add_argument(
        "--body-timeout", type=float, default=limits.body_timeout_s, help="seconds to send a request's body"
    )


def _api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """Every key from --api-key, --api-key-file (one per line, blank lines skipped) and QRERANK_API_KEY."""
    keys = list(args.api_key)
    if args.api_key_file is not None:
        with open(args.api_key_file, encoding="utf-8") as lines:
            from_file = [key for key in (line.strip(" \t\r\n") for line in lines) if key]
        if not from_file:
            raise ValueError(f"--api-key-file {args.api_key_file} holds no key")
        keys += from_file
    if os.environ.get(API_KEY_ENV):
        keys.append(os.environ[API_KEY_ENV])
    return tuple(keys)


def _connection_limits(args: argparse.Namespace) -> serving.ConnectionLimits:
    return serving.ConnectionLimits(
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )


def _serve(args: argparse.Namespace) -> int:
    try:  # the `serve` extra
        from qrerank.serving.app import create_app
        from qrerank.serving.connections import reserve_file_descriptors
        from qrerank.serving.server import serve
    except ImportError as err:
        print(f"qrerank serve: error: {err.name} is missing; pip install 'qrerank[serve]'", file=sys.stderr)
        return 2
    from qrerank import Embedder, Reranker

    engine = dict(
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        max_batch_tokens=args.max_batch_tokens,
        special_tokens=args.special_tokens,
    )
    try:
        if args.model is None and args.embedding_model is None:
            raise ValueError("give --model (a reranker), --embedding-model, or both")
        options = serving.ServerOptions(
            **_api_options(args),  # type: ignore[arg-type]
            api_keys=_api_keys(args),
            max_body_bytes=args.max_body_bytes,
            max_inputs=args.max_inputs,
            auto_truncate=args.auto_truncate,
            request_timeout_s=args.request_timeout,
            max_wait_ms=args.max_wait_ms,
            max_batch_sequences=args.max_batch_sequences,
        )
        limits = _connection_limits(args)
        reserve_file_descriptors(limits)  # before the models load: a wrong limit fails fast
        reranker = None if args.model is None else Reranker(args.model, **engine)
        embedder = None if args.embedding_model is None else Embedder(args.embedding_model, **engine)
        app = create_app(reranker, embedder, options)
    except (TypeError, ValueError, OSError) as err:
        print(f"qrerank serve: error: {err}", file=sys.stderr)
        return 2
    serve(
        app,
        host=args.host,
        port=args.port,
        graceful_timeout_s=args.graceful_timeout,
        log_level=args.log_level,
        limits=limits,
    )
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
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        max_batch_tokens=args.max_batch_tokens,
        special_tokens=args.special_tokens,
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
