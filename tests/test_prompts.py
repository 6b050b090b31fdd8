"""The recipe builders refuse tokenizers they cannot reproduce the official recipe with."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from qrerank import Embedder, Reranker
from qrerank.prompts import RERANK_BODY, RERANK_HEAD, RERANK_PREFIX, RERANK_SUFFIX, EmbeddingPrompt, RerankerPrompt
from qrerank.tokenize import bundled_tokenizer_json


@pytest.fixture(scope="module")
def qwen_tokenizer() -> Tokenizer:
    return Tokenizer.from_str(bundled_tokenizer_json())


def _word_tokenizer(words: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def test_reranker_needs_yes_and_no_tokens() -> None:
    with pytest.raises(ValueError, match=r"no 'yes'/'no' tokens.*cannot be a Qwen3 reranker"):
        RerankerPrompt(_word_tokenizer(["maybe", "<|endoftext|>"]), max_length=512)


def test_embedder_needs_end_of_text() -> None:
    with pytest.raises(ValueError, match=r"no <\|endoftext\|> token"):
        EmbeddingPrompt(_word_tokenizer(["yes", "no"]), max_length=512)


def test_embedder_refuses_a_post_processor_that_adds_other_tokens() -> None:
    tokenizer = Tokenizer.from_str(bundled_tokenizer_json())
    bos = tokenizer.token_to_id("<|im_start|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    with pytest.raises(ValueError, match=r"post-processor turns .* into .*151644"):
        EmbeddingPrompt(tokenizer, max_length=512)


def test_reranker_template_ids(qwen_tokenizer: Tokenizer) -> None:
    """The template is tokenized in three parts; the suffix ends with the empty think block."""
    prompt = RerankerPrompt(qwen_tokenizer, max_length=100)
    assert prompt.prefix_ids == qwen_tokenizer.encode(RERANK_PREFIX, add_special_tokens=False).ids
    assert prompt.suffix_ids[-4:] == [151667, 271, 151668, 271]  # <think>\n\n</think>\n\n
    assert prompt.yes_no_ids == (9693, 2152)
    (ids,) = prompt.encode([("q", "word " * 500)], None)
    assert len(ids) == 100 and ids[: len(prompt.prefix_ids)] == prompt.prefix_ids
    assert ids[-len(prompt.suffix_ids) :] == qwen_tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False).ids


def test_checkpoint_whose_tokenizer_lacks_yes_no_cannot_be_a_reranker(reranker_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    shutil.copytree(reranker_dir, path)
    _word_tokenizer(["maybe", "<|endoftext|>"]).save(str(path / "tokenizer.json"))
    with pytest.raises(ValueError, match="cannot be a Qwen3 reranker"):
        Reranker(path, device="cpu")
    assert Embedder(path, device="cpu", max_length=64).embed(["maybe"]).shape == (1, 64)


def _char_bpe(merge_colon_space: bool) -> Tokenizer:
    """A character BPE without pre-tokenizer (not Qwen3's pipeline), optionally merging ": " into one token."""
    chars = sorted(set(RERANK_PREFIX + RERANK_SUFFIX + RERANK_HEAD.format(instruction="i", query="q") + "abcd "))
    vocab = {ch: i for i, ch in enumerate(chars)} | {"yes": len(chars), "no": len(chars) + 1, ": ": len(chars) + 2}
    return Tokenizer(models.BPE(vocab, [(":", " ")] if merge_colon_space else []))


def test_other_tokenizers_encode_the_body_whole() -> None:
    """Where the boundary proofs do not apply, the body is encoded whole; windows still start after the head."""
    tokenizer = _char_bpe(merge_colon_space=False)
    template = len(tokenizer.encode(RERANK_PREFIX + RERANK_SUFFIX).ids)
    head = len(tokenizer.encode(RERANK_HEAD.format(instruction="i", query="q")).ids)
    prompt = RerankerPrompt(tokenizer, max_length=template + head + 100)  # room for 100 document tokens
    doc = "abcd " * 60  # 300 characters, one token each
    body = tokenizer.encode(RERANK_BODY.format(instruction="i", query="q", doc=doc)).ids
    encoded = prompt.tokenize("q", [doc], "i", max_chunks=4)
    windows = [prompt.prefix_ids + body[:head] + body[start : start + 100] + prompt.suffix_ids for start in
               (head, head + 100, head + 200, head + 300)]  # fmt: skip
    assert list(encoded.tokenized.ids) == windows and encoded.cut == [False]  # the last window: the final space
    with pytest.raises(ValueError, match="joins the reranker template's head to the document"):
        RerankerPrompt(_char_bpe(merge_colon_space=True), max_length=500).tokenize("q", ["abcd"], "i")
