"""The official Qwen3 recipes on Hugging Face transformers, as published (QwenLM/Qwen3-Embedding README).

Each call processes its whole request as one left-padded batch, exactly like the published example.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION, RERANK_BODY, RERANK_PREFIX, RERANK_SUFFIX


def require_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise SystemExit("the baselines need transformers: pip install 'qrerank[bench]'") from None
    return transformers


class RecipeInputs:
    """The published recipes' tokenization: left-padded batches, the reranker's chat template around each pair."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        self.tokenizer = require_transformers().AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.max_length = max_length
        self.prefix = self.tokenizer.encode(RERANK_PREFIX, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False)

    def rerank(self, query: str, docs: list[str]) -> dict[str, torch.Tensor]:
        pairs = [RERANK_BODY.format(instruction=DEFAULT_RERANK_INSTRUCTION, query=query, doc=d) for d in docs]
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix) - len(self.suffix),
        )
        inputs["input_ids"] = [self.prefix + ids + self.suffix for ids in inputs["input_ids"]]
        return dict(self.tokenizer.pad(inputs, padding=True, return_tensors="pt"))

    def embed(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )


class OfficialReranker:
    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype, max_length: int) -> None:
        tf = require_transformers()
        self.inputs = RecipeInputs(model_dir, max_length)
        self.model = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        self.model = self.model.to(device).eval()
        self.device = device
        self.yes = self.inputs.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.inputs.tokenizer.convert_tokens_to_ids("no")

    @torch.no_grad()
    def score(self, query: str, docs: list[str]) -> np.ndarray:
        inputs = {name: t.to(self.device) for name, t in self.inputs.rerank(query, docs).items()}
        logits = self.model(**inputs).logits[:, -1, :]
        yes_no = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1)
        return F.log_softmax(yes_no.float(), dim=1)[:, 1].exp().cpu().numpy()


class OfficialEmbedder:
    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype, max_length: int) -> None:
        tf = require_transformers()
        self.inputs = RecipeInputs(model_dir, max_length)
        self.model = tf.AutoModel.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        self.model = self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        batch = {name: t.to(self.device) for name, t in self.inputs.embed(texts).items()}
        hidden = self.model(**batch).last_hidden_state
        pooled = hidden[:, -1]  # left padding: the last position is every text's final token
        return F.normalize(pooled.float(), p=2, dim=1).cpu().numpy()


class SentenceTransformersEmbedder:
    """Qwen3-Embedding as its model card runs it on sentence-transformers: last-token pooling, then L2 norm.

    Built from modules, so a bare checkpoint directory (without sentence-transformers config files) gets the
    published pooling rather than the library's mean-pooling default.
    """

    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype, max_length: int) -> None:
        try:
            from sentence_transformers import SentenceTransformer, models
        except ImportError:
            raise SystemExit("this baseline needs sentence-transformers: pip install sentence-transformers") from None
        # model_args / tokenizer_args: the names sentence-transformers 3-5 take (6 still accepts them)
        transformer = models.Transformer(
            str(model_dir),
            max_seq_length=max_length,
            model_args={"torch_dtype": dtype, "attn_implementation": "sdpa"},
            tokenizer_args={"padding_side": "left"},
        )
        pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
        self.model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device=str(device))

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
