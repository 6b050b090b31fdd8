"""Ray: embed or score a dataset across a cluster (Ray Data), and qrerank's HTTP API as a Ray Serve deployment.

Ray Data: `EmbedBatches` / `ScoreBatches` are callable classes for `Dataset.map_batches` (with the
default, numpy, batch format). Ray starts `concurrency` actors; each loads its model once, on its own
device (ask for `num_gpus=1` per actor), and turns each batch's text columns into a new column.

    ds = ray.data.read_parquet("s3://bucket/passages/")
    ds = ds.map_batches(
        EmbedBatches, fn_constructor_kwargs={"model": "Qwen/Qwen3-Embedding-0.6B", "dim": 256},
        batch_size=1024, concurrency=8, num_gpus=1,
    )
    ds.write_parquet("s3://bucket/vectors/")

Ray Serve: `serve_deployment(...)` runs the same server as `qrerank serve` in each replica (its own
models and AsyncEngine), so clients speak the same APIs to a Serve cluster.

    app = serve_deployment(reranker="Qwen/Qwen3-Reranker-0.6B").options(
        num_replicas=4, ray_actor_options={"num_gpus": 1}).bind()
    serve.run(app, route_prefix="/")
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from ray import serve

from qrerank.embedder import Embedder
from qrerank.requests import EmbedRequest
from qrerank.reranker import Reranker
from qrerank.validation import check_bool, check_optional_str, check_str


class EmbedBatches:
    """`batch[column]` (str) -> `batch[output_column]`: float32 [n, dim] embeddings, in the batch's order.

    `model` and the engine arguments (`device`, `dtype`, `max_length`, `max_batch_tokens`, ...) as
    for `Embedder`; `instruction`, `dim`, `normalize` as for `Embedder.embed`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        column: str = "text",
        output_column: str = "embedding",
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        **engine_args: Any,
    ) -> None:
        self.column = check_str(column, "column")
        self.output_column = check_str(output_column, "output_column")
        self.embedder = Embedder(model, **engine_args)
        self.embedder.check(EmbedRequest([], instruction, dim, normalize))  # here, not on the first batch
        self.call_args = dict(instruction=instruction, dim=dim, normalize=normalize)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = _column(batch, self.column)
        return {**batch, self.output_column: self.embedder.embed(texts, **self.call_args)}


class ScoreBatches:
    """(`batch[query_column]`, `batch[document_column]`) pairs -> `batch[output_column]`: float32 [n] scores.

    Pairs of the same query share their prompt prefix within a batch. `model` and the engine
    arguments as for `Reranker`; `instruction` and `raw` as for `Reranker.score_pairs`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        query_column: str = "query",
        document_column: str = "document",
        output_column: str = "score",
        instruction: str | None = None,
        raw: bool = False,
        **engine_args: Any,
    ) -> None:
        self.query_column = check_str(query_column, "query_column")
        self.document_column = check_str(document_column, "document_column")
        self.output_column = check_str(output_column, "output_column")
        self.reranker = Reranker(model, **engine_args)
        self.call_args = dict(instruction=check_optional_str(instruction, "instruction"), raw=check_bool(raw, "raw"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = list(zip(_column(batch, self.query_column), _column(batch, self.document_column), strict=True))
        return {**batch, self.output_column: self.reranker.score_pairs(pairs, **self.call_args)}


def _column(batch: dict[str, np.ndarray], name: str) -> list[str]:
    if name not in batch:
        raise ValueError(f"the batch has no column {name!r}; its columns are {sorted(batch)}")
    return batch[name].tolist()  # numpy object array of str -> list[str] (non-str values fail in the model class)


def serve_deployment(
    reranker: str | os.PathLike[str] | None = None,
    embedder: str | os.PathLike[str] | None = None,
    *,
    served_model_name: str | None = None,
    served_embedding_model_name: str | None = None,
    engine_args: dict[str, Any] | None = None,
    **server_options: Any,
) -> serve.Deployment:
    """A Ray Serve deployment serving qrerank's HTTP API (see `qrerank serve`) from every replica.

    Model names default to the paths given, as with `qrerank serve`; `server_options` are the other
    `ServerOptions` fields (api_keys, max_inputs, ...); `engine_args` go to Reranker and Embedder.
    Everything is checked here, before any replica starts; the models load in each replica.
    """
    from qrerank.serving.app import create_app  # the `serve` extra, which Ray Serve itself needs
    from qrerank.serving.options import ServerOptions

    if reranker is None and embedder is None:
        raise ValueError("serve_deployment needs a reranker, an embedder or both; got neither")
    options = ServerOptions(
        reranker_name=None if reranker is None else served_model_name or os.fspath(reranker),
        embedder_name=None if embedder is None else served_embedding_model_name or os.fspath(embedder),
        **server_options,
    )
    engine = dict(engine_args or {})

    def build_app() -> Any:  # runs in each replica, on its device
        return create_app(
            None if reranker is None else Reranker(reranker, **engine),
            None if embedder is None else Embedder(embedder, **engine),
            options,
        )

    @serve.ingress(build_app)
    class QrerankServer:
        """One replica: the qrerank app, its models and its AsyncEngine."""

    return serve.deployment(QrerankServer, name="qrerank")
