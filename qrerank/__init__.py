"""qrerank: fast, recipe-exact Qwen3 rerankers and embedding models."""

from qrerank.embedder import Embedder
from qrerank.functions import embed, score
from qrerank.index import Index
from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized
from qrerank.reranker import Reranker
from qrerank.retrieve import search
from qrerank.serving.async_engine import AsyncEngine
from qrerank.similarity import topk

__all__ = [
    "AsyncEngine",
    "EmbedRequest",
    "Embedder",
    "Index",
    "Reranker",
    "ScoreRequest",
    "Tokenized",
    "embed",
    "score",
    "search",
    "topk",
]
__version__ = "0.1.0"
