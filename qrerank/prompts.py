"""The official Qwen3 reranker and embedding recipes, as token ids (QwenLM/Qwen3-Embedding README)."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
RERANK_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
DEFAULT_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
EMBED_QUERY = "Instruct: {instruction}\nQuery:{text}"  # no space after "Query:", as published
END_OF_TEXT = "<|endoftext|>"


class RerankerPrompt:
    """prefix + body + suffix, tokenized separately; only the body is cut so the suffix always survives."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.prefix_ids: list[int] = tokenizer.encode(RERANK_PREFIX, add_special_tokens=False).ids
        self.suffix_ids: list[int] = tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False).ids
        template = len(self.prefix_ids) + len(self.suffix_ids)
        if max_length <= template:
            raise ValueError(
                f"max_length={max_length} is too small: the reranker template alone takes {template} tokens, "
                f"so max_length must be at least {template + 1}"
            )
        self.body_budget = max_length - template
        yes, no = tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")
        if yes is None or no is None:
            raise ValueError("the tokenizer has no 'yes'/'no' tokens, so this checkpoint cannot be a Qwen3 reranker")
        self.yes_no_ids = (yes, no)

    def encode(self, pairs: Sequence[tuple[str, str]], instruction: str | None) -> list[list[int]]:
        if instruction is None:
            instruction = DEFAULT_RERANK_INSTRUCTION
        bodies = [RERANK_BODY.format(instruction=instruction, query=q, doc=d) for q, d in pairs]
        encodings = self.tokenizer.encode_batch(bodies, add_special_tokens=False)
        budget, prefix, suffix = self.body_budget, self.prefix_ids, self.suffix_ids
        return [prefix + e.ids[:budget] + suffix for e in encodings]


class EmbeddingPrompt:
    """Text (or instructed query), cut to max_length - 1 tokens, then `<|endoftext|>`: the pooled token.

    The Qwen3-Embedding tokenizer appends `<|endoftext|>` itself, after truncating the text to
    max_length - 1; other Qwen3 tokenizers append nothing. qrerank always encodes without the
    tokenizer's special tokens and appends the token itself, which gives those exact ids in both
    cases and can never append it twice. A post-processor that adds anything else is refused.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        eos = tokenizer.token_to_id(END_OF_TEXT)
        if eos is None:
            raise ValueError(f"the tokenizer has no {END_OF_TEXT} token, so this checkpoint cannot be a Qwen3 embedder")
        probe = "qrerank probe"
        plain = tokenizer.encode(probe, add_special_tokens=False).ids
        full = tokenizer.encode(probe, add_special_tokens=True).ids
        if full not in (plain, [*plain, eos]):
            raise ValueError(
                f"the tokenizer's post-processor turns {plain} into {full}; qrerank supports only the Qwen3 "
                f"behaviours (append nothing, or append {END_OF_TEXT})"
            )
        self.tokenizer_appends_eos = full != plain
        self.eos_id = eos
        self.text_budget = max_length - 1

    def encode(self, texts: Sequence[str], instruction: str | None) -> list[list[int]]:
        if instruction is not None:
            texts = [EMBED_QUERY.format(instruction=instruction, text=t) for t in texts]
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        budget, eos = self.text_budget, [self.eos_id]
        return [e.ids[:budget] + eos for e in encodings]
