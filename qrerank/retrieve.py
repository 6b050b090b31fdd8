"""`qrerank.search`: retrieve candidates by embedding similarity, then rerank them with the cross-encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qrerank.embedder import Embedder
from qrerank.index import DEFAULT_TASK, Index
from qrerank.reranker import Reranker
from qrerank.similarity import MAX_K
from qrerank.validation import check_int, check_optional_str, check_str_list


def search(
    query: str | Sequence[str],
    corpus: Sequence[str] | Index,
    *,
    embedder: Embedder,
    reranker: Reranker,
    candidates: int = 50,
    top_k: int = 10,
    instruction: str | None = None,
) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """The best `top_k` documents of `corpus` for `query`, as [{"index", "score", "similarity", "document"}].

    Stage 1 embeds the query (as a query, with `instruction`) and takes the `candidates` corpus entries of
    highest similarity (`qrerank.topk`; at most 1024); stage 2 scores those with `reranker` and keeps the
    best `top_k` by its score ("score"; "similarity" is stage 1's). Equal reranker scores keep stage 1's
    order. `instruction` (default: the web-search task of the Qwen3 recipes) serves both stages.

    `corpus`: a list of texts, embedded once per call (for all queries of the call), or an `Index` built
    from texts, which keeps its embeddings across calls. A list of queries gives a list of results.
    """
    if not isinstance(embedder, Embedder):
        raise TypeError(f"embedder must be a qrerank.Embedder, got {type(embedder).__name__}")
    if not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be a qrerank.Reranker, got {type(reranker).__name__}")
    queries = [query] if isinstance(query, str) else check_str_list(query, "query")
    candidates = check_int(candidates, "candidates", 1, MAX_K)
    top_k = check_int(top_k, "top_k", 1)
    check_optional_str(instruction, "instruction")
    if isinstance(corpus, Index):
        index = corpus
        if index.texts is None and len(index) > 0:
            raise ValueError("the corpus Index has no texts to rerank; build it from texts or pass texts= with vectors")
    else:
        index = Index(check_str_list(corpus, "corpus"), embedder=embedder)
    texts = index.texts or []

    results: list[list[dict[str, Any]]] = [[] for _ in queries]
    if len(index) > 0 and queries:
        task = DEFAULT_TASK if instruction is None else instruction
        vectors = embedder.embed(queries, instruction=task, dim=index.dim, as_tensor=True)
        similarities, rows = index.search(vectors, candidates)
        for query_text, result, sims, found in zip(queries, results, similarities, rows):
            docs = [texts[i] for i in found]
            for ranked in reranker.rank(query_text, docs, top_k=top_k, instruction=instruction):
                position = ranked["index"]
                result.append(
                    {
                        "index": int(found[position]),
                        "score": ranked["score"],
                        "similarity": float(sims[position]),
                        "document": docs[position],
                    }
                )
    return results[0] if isinstance(query, str) else results
