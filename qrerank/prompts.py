"""The official Qwen3 reranker and embedding recipes, as token ids (QwenLM/Qwen3-Embedding README).

User text (query, documents, instruction, embedding texts) is encoded with `BoundedEncoder`, so a
text costs what max_length can use of it, never its whole length, and the ids stay the recipe's.
`special_tokens`: "parse" (the recipe: `<|im_end|>` in a document becomes the control token) or
"plain" (user text is encoded with no added tokens at all, so it can never forge the template's
control tokens; the template keeps its own).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from qrerank.bounded import BoundedEncoder
from qrerank.requests import Tokenized
from qrerank.validation import check_choice

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
RERANK_HEAD = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>:"
RERANK_BODY = RERANK_HEAD + " {doc}"
DEFAULT_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
EMBED_QUERY = "Instruct: {instruction}\nQuery:{text}"  # no space after "Query:", as published
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = ("parse", "plain")


@dataclass(frozen=True)
class Encoded:
    """A request's sequences, and per item whether the recipe cut it (it did not fit in max_length)."""

    tokenized: Tokenized
    cut: list[bool]


def text_encoder(tokenizer: Tokenizer, special_tokens: str) -> BoundedEncoder:
    """The encoder of user text: with the tokenizer's added tokens ("parse") or none of them ("plain")."""
    check_choice(special_tokens, "special_tokens", SPECIAL_TOKENS)
    if special_tokens == "plain":
        config = json.loads(tokenizer.to_str())
        config["added_tokens"] = []
        tokenizer = Tokenizer.from_str(json.dumps(config))
    return BoundedEncoder(tokenizer)


class RerankerPrompt:
    """prefix + body + suffix, tokenized separately; only the body is cut so the suffix always survives.

    The body is RERANK_HEAD + " " + document. Its ids are the head's, then the document's own (from its
    leading space on): the tokenizer cannot join text across ": " (`qrerank.boundaries`, checked at
    construction), so the head is encoded once per query and a long document can be cut into windows.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, special_tokens: str = "parse") -> None:
        self.tokenizer = tokenizer
        self.special_tokens = special_tokens
        self.encoder = text_encoder(tokenizer, special_tokens)
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
        # The cut between the head's ":" and the document's space reads only those two characters, and an
        # added token could cover them only by containing them.
        sample = RERANK_HEAD.format(instruction="", query="") + " x"
        added = self.encoder.tokenizer.get_added_tokens_decoder().values()
        self._head_apart = self.encoder.hard_cut(sample, len(sample) - 2) and not any(": " in t.content for t in added)

    def encode(self, pairs: Sequence[tuple[str, str]], instruction: str | None) -> list[list[int]]:
        """The recipe's ids of each (query, document) pair."""
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        ids: list[list[int]] = [[] for _ in pairs]
        for query, members in by_query.items():
            encoded = self.tokenize(query, [pairs[i][1] for i in members], instruction)
            for i, seq in zip(members, encoded.tokenized.ids, strict=True):
                ids[i] = seq
        return ids

    def tokenize(
        self,
        query: str,
        docs: Sequence[str],
        instruction: str | None,
        max_chunks: int | None = None,
        max_doc_tokens: int | None = None,
    ) -> Encoded:
        """One query's documents. `max_doc_tokens`: each document's own tokens are cut to that many first.
        `max_chunks`: a document whose tokens exceed the body's room after the head is scored in up to that
        many consecutive windows of them, each with the whole template; None: the recipe's truncation."""
        if instruction is None:
            instruction = DEFAULT_RERANK_INSTRUCTION
        head = RERANK_HEAD.format(instruction=instruction, query=query)
        [(head_ids, _)] = self.encoder.encode([head], [self.body_budget])
        room = self.body_budget - len(head_ids)  # body tokens left for a document
        if room <= 0:  # the head alone fills the body: every document is cut away
            body = [self.prefix_ids + head_ids + self.suffix_ids]
            return Encoded(Tokenized(body * len(docs)), [True] * len(docs))
        keep = room * (1 if max_chunks is None else max_chunks)
        if max_doc_tokens is not None:
            keep = min(keep, max_doc_tokens)
        cuttable = max_chunks is None and (max_doc_tokens is None or max_doc_tokens > room)
        sequences, owners, cut = [], [], []
        for item, (doc_ids, more) in enumerate(self._document_ids(head, head_ids, docs, keep)):
            cut.append(cuttable and more)
            for start in range(0, max(len(doc_ids), 1), room):
                sequences.append(self.prefix_ids + head_ids + doc_ids[start : start + room] + self.suffix_ids)
                owners.append(item)
        return Encoded(Tokenized(sequences, None if max_chunks is None else np.array(owners, dtype=np.int64)), cut)

    def _document_ids(
        self, head: str, head_ids: list[int], docs: Sequence[str], limit: int
    ) -> list[tuple[list[int], bool]]:
        """Each document's first `limit` tokens of the body after the head, and whether it has more."""
        if self._head_apart:
            return self.encoder.encode([" " + d for d in docs], [limit] * len(docs))
        # A tokenizer the boundary proofs do not cover: the body is encoded whole, and must start with the head.
        bodies = self.encoder.encode([f"{head} {d}" for d in docs], [len(head_ids) + limit] * len(docs))
        if any(ids[: len(head_ids)] != head_ids for ids, _ in bodies):
            raise ValueError("this tokenizer joins the reranker template's head to the document; use Qwen3's")
        return [(ids[len(head_ids) :], more) for ids, more in bodies]


class EmbeddingPrompt:
    """Text (or instructed query), cut to max_length - 1 tokens, then `<|endoftext|>`: the pooled token.

    The Qwen3-Embedding tokenizer appends `<|endoftext|>` itself, after truncating the text to
    max_length - 1; other Qwen3 tokenizers append nothing. qrerank always encodes without the
    tokenizer's special tokens and appends the token itself, which gives those exact ids in both
    cases and can never append it twice. A post-processor that adds anything else is refused.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, special_tokens: str = "parse") -> None:
        self.tokenizer = tokenizer
        self.special_tokens = special_tokens
        self.encoder = text_encoder(tokenizer, special_tokens)
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

    def encode(self, texts: Sequence[str], instruction: str | None, prompt: str | None = None) -> list[list[int]]:
        """The recipe's ids of each text; `prompt`: a sentence-transformers prompt, put before each text as it is."""
        return list(self.tokenize(texts, instruction, prompt).tokenized.ids)

    def tokenize(self, texts: Sequence[str], instruction: str | None, prompt: str | None = None) -> Encoded:
        if prompt:
            texts = [prompt + t for t in texts]
        if instruction is not None:
            texts = [EMBED_QUERY.format(instruction=instruction, text=t) for t in texts]
        encoded = self.encoder.encode(texts, [self.text_budget] * len(texts))
        return Encoded(Tokenized([[*ids, self.eos_id] for ids, _ in encoded]), [more for _, more in encoded])
