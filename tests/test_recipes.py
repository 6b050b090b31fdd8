"""Whole-model parity with the official Qwen3 recipes on Hugging Face transformers (fp32, CPU).

The two recipes below are written out as QwenLM/Qwen3-Embedding publishes them (left padding, full
LM head, log-softmax over [no, yes]; last-token pooling and L2 normalisation), independently of
qrerank's own prompt code, so that a mistake in either shows up as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from qrerank import Embedder, Reranker

QUERIES = [
    "What is the capital of China?",
    "Explain gravity",
    "",
    "Wie funktioniert ein Transformer? 变压器 {braces} <|im_end|>",
]
DOCS = [
    "",
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. " * 3,
    "x",
    " leading and trailing spaces ",
    "A long document that will be cut. " * 80,  # far beyond max_length: the truncation path
    "Beijing\n\nBeijing, 北京市, is the capital of the People's Republic of China.",
    "emoji 🚀 and tabs\tand <Document>: markers",
]
INSTRUCTIONS = [None, "Given a question, retrieve passages that answer it", ""]
MAX_LENGTH = 192


@pytest.fixture(scope="module")
def hf_reranker(reranker_dir: Path) -> tuple:
    tokenizer = AutoTokenizer.from_pretrained(reranker_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(reranker_dir, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def hf_embedder(embedding_dir: Path) -> tuple:
    tokenizer = AutoTokenizer.from_pretrained(embedding_dir, padding_side="left")
    model = AutoModel.from_pretrained(embedding_dir, dtype=torch.float32).eval()
    return tokenizer, model


def official_rerank(hf: tuple, instruction: str | None, query: str, docs: list[str], max_length: int) -> np.ndarray:
    tokenizer, model = hf
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'  # noqa: E501
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)

    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
            instruction=instruction, query=query, doc=doc
        )

    def process_inputs(pairs: list[str]) -> dict:
        inputs = tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        return inputs

    @torch.no_grad()
    def compute_logits(inputs: dict) -> list[float]:
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    pairs = [format_instruction(instruction, query, doc) for doc in docs]
    return np.array(compute_logits(process_inputs(pairs)), dtype=np.float32)


def official_embed(hf: tuple, input_texts: list[str], max_length: int = 8192) -> torch.Tensor:
    def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
        if left_padding:
            return last_hidden_states[:, -1]
        sequence_lengths = attention_mask.sum(dim=1) - 1
        batch_size = last_hidden_states.shape[0]
        return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]

    tokenizer, model = hf
    batch_dict = tokenizer(input_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch_dict)
    embeddings = last_token_pool(outputs.last_hidden_state, batch_dict["attention_mask"])
    return F.normalize(embeddings, p=2, dim=1)


@pytest.fixture(scope="module")
def short_reranker(reranker_dir: Path) -> Reranker:
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=MAX_LENGTH, max_batch_tokens=700)


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
@pytest.mark.parametrize("query", QUERIES)
def test_reranker_matches_official_recipe(
    hf_reranker: tuple, short_reranker: Reranker, instruction: str | None, query: str
) -> None:
    expected = official_rerank(hf_reranker, instruction, query, DOCS, MAX_LENGTH)
    got = short_reranker.score(query, DOCS, instruction=instruction)
    assert got.dtype == np.float32 and got.shape == (len(DOCS),)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.std(expected) > 0.01, "random weights too flat to test ranking"
    assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-expected, kind="stable"))


def test_truncation_keeps_suffix(short_reranker: Reranker) -> None:
    ids = short_reranker.prompt.encode([("q", DOCS[5])], None)[0]
    assert len(ids) == MAX_LENGTH
    assert ids[-len(short_reranker.prompt.suffix_ids) :] == short_reranker.prompt.suffix_ids


def test_reranker_long_context_matches_official(hf_reranker: tuple, reranker: Reranker) -> None:
    """The session reranker (max_length 256, small micro-batches) on documents beyond its budget."""
    docs = [DOCS[5], DOCS[2] * 3, DOCS[1]]
    expected = official_rerank(hf_reranker, None, QUERIES[0], docs, 256)
    np.testing.assert_allclose(reranker.score(QUERIES[0], docs), expected, rtol=0, atol=1e-5)


def _queries(instruction: str, texts: list[str]) -> list[str]:
    return [f"Instruct: {instruction}\nQuery:{t}" for t in texts]


@pytest.mark.parametrize(
    "instruction", [None, "Given a web search query, retrieve relevant passages that answer the query"]
)
@pytest.mark.parametrize("dim", [None, 32, 48])
def test_embedder_matches_official_recipe(
    hf_embedder: tuple, embedder: Embedder, instruction: str | None, dim: int | None
) -> None:
    texts = QUERIES + DOCS[:5]
    official_inputs = texts if instruction is None else _queries(instruction, texts)
    expected = official_embed(hf_embedder, official_inputs, max_length=256)
    if dim is not None:
        expected = F.normalize(expected[:, :dim], p=2, dim=1)
    got = torch.from_numpy(embedder.embed(texts, instruction=instruction, dim=dim))
    assert got.shape == expected.shape
    cosine = (got * expected).sum(dim=1)
    assert cosine.min() >= 0.99999, cosine
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_embedder_truncation_matches_official(hf_embedder: tuple, embedder: Embedder) -> None:
    texts = [DOCS[5], DOCS[2] * 8]  # both longer than the session embedder's max_length of 256
    assert all(len(ids) == 256 for ids in embedder.prompt.encode(texts, None))
    expected = official_embed(hf_embedder, texts, max_length=256)
    torch.testing.assert_close(torch.from_numpy(embedder.embed(texts)), expected, rtol=0, atol=1e-5)


def test_embedding_appends_eos_once(embedder: Embedder, reranker_dir: Path) -> None:
    """The embedding tokenizer appends <|endoftext|> itself, the reranker one does not: ids must agree."""
    plain = Embedder(reranker_dir, device="cpu", max_length=256)
    assert embedder.prompt.tokenizer_appends_eos and not plain.prompt.tokenizer_appends_eos
    texts = ["hello world", "", "ends with <|endoftext|>"]
    with_eos = embedder.prompt.encode(texts, None)
    assert with_eos == plain.prompt.encode(texts, None)
    assert [ids.count(151643) for ids in with_eos] == [1, 1, 2]  # a literal one in the text stays


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reranker_through_the_triton_kernels_matches_official(
    hf_reranker: tuple, reranker_dir: Path, dtype: torch.dtype
) -> None:
    """The whole model on qrerank's Triton kernels (Triton's interpreter without a GPU) against the recipe.

    fp16: no further from the fp32 recipe than the torch reference ops in fp16 are (2x, as for each kernel).
    """
    docs = [DOCS[1], DOCS[3], DOCS[6], DOCS[7]]
    expected = official_rerank(hf_reranker, None, QUERIES[3], docs, MAX_LENGTH)
    kwargs = {"device": "cpu", "dtype": dtype, "max_length": MAX_LENGTH}
    got = Reranker(reranker_dir, backend="triton", **kwargs).score(QUERIES[3], docs)
    if dtype == torch.float32:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    else:
        torch_error = np.abs(Reranker(reranker_dir, backend="torch", **kwargs).score(QUERIES[3], docs) - expected)
        assert np.abs(got - expected).max() <= 2 * torch_error.max() + 1e-4
    assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-expected, kind="stable"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_embedder_through_the_triton_kernels_matches_official(
    hf_embedder: tuple, embedding_dir: Path, dtype: torch.dtype
) -> None:
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    texts = [QUERIES[0], DOCS[1], DOCS[7]]
    expected = official_embed(hf_embedder, _queries(instruction, texts), max_length=256).numpy()
    kwargs = {"device": "cpu", "dtype": dtype, "max_length": 256}
    got = Embedder(embedding_dir, backend="triton", **kwargs).embed(texts, instruction=instruction)
    cosine = (got * expected).sum(axis=1)
    if dtype == torch.float32:
        assert cosine.min() >= 0.99999, cosine
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    else:
        theirs = Embedder(embedding_dir, backend="torch", **kwargs).embed(texts, instruction=instruction)
        assert 1 - cosine.min() <= 2 * (1 - (theirs * expected).sum(axis=1).min()) + 1e-5, cosine
