"""Text that no tokenizer takes is refused at the public API naming the argument; progress bars for scoring."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from qrerank import Embedder, EmbedRequest, Reranker, ScoreRequest

LONE = "caf\udce9"  # bytes decoded with surrogateescape: a lone surrogate at character 3


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda r, e: r.score(LONE, ["d"]), "query"),
        (lambda r, e: r.score("q", ["d", LONE]), "docs[1]"),
        (lambda r, e: r.score("q", ["d"], instruction=LONE), "instruction"),
        (lambda r, e: r.rank("q", [LONE]), "docs[0]"),
        (lambda r, e: r.score_pairs([("q", "d"), ("q", LONE)]), "pairs[1][1]"),
        (lambda r, e: r.score_pairs([(LONE, "d")]), "pairs[0][0]"),
        (lambda r, e: r.score_batch([ScoreRequest("q", ["\ud800"])]), "docs[0]"),
        (lambda r, e: e.embed(LONE), "texts"),
        (lambda r, e: e.embed(["a", "b", LONE]), "texts[2]"),
        (lambda r, e: e.embed(["a"], instruction=LONE), "instruction"),
        (lambda r, e: e.embed_batch([EmbedRequest(["\udfff"])]), "texts[0]"),
    ],
)
def test_lone_surrogates_are_a_value_error_naming_the_argument(
    reranker: Reranker, embedder: Embedder, call: Callable[[Reranker, Embedder], Any], name: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} is not valid Unicode text: .*lone surrogate U\+D"):
        call(reranker, embedder)


def test_score_pairs_and_rank_show_progress(reranker: Reranker, capsys: pytest.CaptureFixture[str]) -> None:
    docs = ["one", "two", "three"]
    reranker.score("q", docs, show_progress=True)
    reranker.score_pairs([("q", d) for d in docs], show_progress=True)
    reranker.rank("q", docs, show_progress=True, max_chunks_per_doc=2)
    bars = capsys.readouterr().err
    assert bars.count("| 0/3 ") == bars.count("\n") == 3 and "| 3/3 " in bars, bars  # three bars, to 3/3
    reranker.score("q", docs)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="show_progress must be a bool, got int"):
        reranker.rank("q", docs, show_progress=1)  # type: ignore[arg-type]
