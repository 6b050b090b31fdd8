"""Infinity's rerank answer: /rerank with `documents` (and any rerank body carrying Infinity's `raw_scores`).

Infinity takes Cohere's body (`query`, `documents`, `top_n`, `return_documents`, `raw_scores`; cohere.py
decodes and scores it) and answers `{"object": "rerank", "results": [{"relevance_score", "index",
"document"?}], "model", "usage", "id", "created"}`, each document a plain string. Infinity's embeddings
are OpenAI's, served by openai.py at /embeddings.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qrerank.serving.api.cohere import Ranked


def answer(ranked: Ranked, documents: Sequence[str | dict[str, str]] | None) -> dict[str, Any]:
    """`documents`: echoed as strings in the results (None: not asked for)."""
    scores = ranked.scores
    results: list[dict[str, Any]] = [{"relevance_score": float(scores[i]), "index": i} for i in ranked.order]
    if documents is not None:
        for result in results:
            document = documents[result["index"]]
            result["document"] = document if isinstance(document, str) else document.get("text")
    usage = {"prompt_tokens": ranked.tokens, "total_tokens": ranked.tokens}
    body = {"object": "rerank", "results": results, "model": ranked.name, "usage": usage}
    return {**body, "id": f"infinity-{uuid.uuid4()}", "created": int(time.time())}
