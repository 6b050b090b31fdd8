"""The `qrerank` command: score, embed (JSON on stdout) and bench."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from qrerank.bench import run as bench_run
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH


def _engine_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument(
        "--model", default=default_model, help=f"checkpoint directory or hub id (default {default_model})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on cuda, fp32 on cpu)")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        bench_run.run(args)
        return 0
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
