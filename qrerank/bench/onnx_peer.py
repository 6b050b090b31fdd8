"""ONNX Runtime as a peer: the same checkpoint exported from transformers (fp32) and run on ORT's CPU provider.

The exported graph is the recipe's model plus its read-out, so ORT does all the work the official recipe does:
for the reranker the last token's yes-minus-no logit through a sigmoid (the LM head's two rows, not its
151k-row projection of every token), for embeddings the last token L2-normalised. Inputs are the recipe's
left-padded batches. With `quantize`, ORT's dynamic int8 quantization of every MatMul is applied on top.
Exporting is the fragile part (it depends on the transformers and torch versions), so `load` returns the
reason instead of a peer when it fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qrerank.bench.baselines import RecipeInputs, require_transformers


class _ScoreHead(torch.nn.Module):
    """Qwen3 base model -> sigmoid(h_last . (W_yes - W_no)) per left-padded row."""

    def __init__(self, base: torch.nn.Module, direction: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("direction", direction)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1]
        return torch.sigmoid(hidden @ self.direction)


class _EmbedHead(torch.nn.Module):
    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1]
        return F.normalize(hidden, p=2, dim=1)


def _export(model_dir: Path, kind: str, path: Path, inputs: RecipeInputs) -> None:
    tf = require_transformers()
    if kind == "reranker":
        causal = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
        yes, no = (inputs.tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no"))
        head = causal.get_output_embeddings().weight
        module: torch.nn.Module = _ScoreHead(causal.model, (head[yes] - head[no]).detach().clone())
    else:
        module = _EmbedHead(tf.AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa"))
    example = inputs.embed(["an example", "a longer example text"])  # left padding in the traced batch
    dims = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["output"],
            dynamic_axes=dims,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: seconds, where the dynamo one takes minutes at 0.6B
        )


class OnnxPeer:
    """One exported model in an ORT session, scoring or embedding with the recipe's inputs."""

    def __init__(self, session: object, inputs: RecipeInputs) -> None:
        self.session = session
        self.inputs = inputs

    def _run(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: batch[name].numpy() for name in ("input_ids", "attention_mask")}
        return self.session.run(None, feed)[0]  # type: ignore[attr-defined]

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        return self._run(self.inputs.rerank(query, docs))

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._run(self.inputs.embed(texts))


def load(model_dir: Path, kind: str, workdir: Path, max_length: int, quantize: bool = False) -> OnnxPeer | str:
    """An ORT peer for `kind` ("reranker" or "embedding"), exported into `workdir`; or why there is none."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install 'qrerank[peers]')"
    inputs = RecipeInputs(model_dir, max_length)
    path = workdir / f"{kind}.onnx"
    try:
        _export(model_dir, kind, path, inputs)
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = workdir / f"{kind}.int8.onnx"
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, use_external_data_format=True)
            path = quantized
    except Exception as error:  # any exporter failure means "no peer", and the bench prints why
        return f"export failed: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores qrerank gets
    # ORT's threads otherwise spin after each run, taking the cores from whichever system runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return OnnxPeer(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), inputs)
