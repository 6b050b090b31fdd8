"""qrerank: fast, recipe-exact Qwen3 rerankers and embedding models."""

from qrerank.embedder import Embedder
from qrerank.functions import embed, score
from qrerank.requests import EmbedRequest, ScoreRequest
from qrerank.reranker import Reranker
from qrerank.serving.async_engine import AsyncEngine

__all__ = ["AsyncEngine", "EmbedRequest", "Embedder", "Reranker", "ScoreRequest", "embed", "score"]
__version__ = "0.1.0"
