"""Bounded encoding: a text's first `limit` token ids, reading only as much of the text as they need.

The ids are exactly those of encoding the whole text and cutting (BPE merges at the cut included):

1. Encode a window `text[:m]` (about 6 characters per wanted token, doubled while not enough).
2. Its first `k` tokens are the text's if `k` tokens end at a *hard cut* of the text (a pre-token
   boundary that nothing after it can move; `qrerank.boundaries`, proven there). The window's word
   starts after the wanted tokens are the candidates.
3. Or the wanted tokens lie in the window's last pre-token, which runs on past the window
   (`TextBoundaries.long_run`, e.g. megabytes of letters without a space). Inside one pre-token BPE
   decides, and BPE has a local certificate (the properties of the `bpe` crate of github/rust-gems,
   re-derived for merge-rank BPE with leftmost tie-breaking, which is what tokenizers runs): any infix
   of an encoding is the encoding of its bytes, and two encodings that share a token at the joint,
   or meet at a pair that is itself an encoding, concatenate into an encoding. So if the window's
   tokens of the pre-token are `e_1..e_n`, then `e_1..e_j` is the encoding of its bytes, and it
   begins the pre-token's full encoding if (`e_j`, `f`) is an encoding, `f` the first token of the
   encoding of the bytes that follow. `f` is not known without the rest of the text, but it spells a
   prefix of those bytes, encodes to itself, and pairs with a successor that does the same
   (`LOOKAHEAD`); `_bpe_cut` checks `e_j` against every such candidate (the window holds a longest
   token's length of bytes past the candidates, so none is missed).
4. Otherwise grow the window; at the end of the text the encoding is the whole text's.

So the result is exact by construction; what is checked at run time is which cuts the proofs admit.
A tokenizer whose pipeline is not the Qwen3 one the proofs are about (`qwen_pipeline`) is always
encoded whole, which is exact too. The cost is bounded by `limit` for the texts the proofs cover;
texts that defeat them (long stretches where NFC joins every character to the next, characters
unassigned in Python's Unicode tables, whitespace runs long before the cut) cost a whole encoding.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from functools import cache
from itertools import accumulate

from tokenizers import Encoding, Tokenizer

from qrerank.boundaries import NFC_CONTEXT, QWEN_PATTERN, TextBoundaries

CHARS_PER_TOKEN = 6  # first window: English averages about 4.5 characters a token, CJK about 1.5
MAX_TRIES = 64  # candidate cuts examined per window before it grows instead
LOOKAHEAD = 1  # tokens after a candidate first token that must pair up for it to stay a candidate


def qwen_pipeline(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` is NFC, then `QWEN_PATTERN` splitting, then byte-level BPE with plain added tokens."""
    pre = tokenizer.pre_tokenizer
    normalizer = tokenizer.normalizer
    model = tokenizer.model
    if pre is None or type(model).__name__ != "BPE" or tokenizer.truncation or tokenizer.padding:
        return False
    steps = json.loads(pre.__getstate__())
    expected = [
        {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
    ]
    pipeline_ok = (
        steps.get("type") == "Sequence"
        and len(steps.get("pretokenizers", [])) == 2
        and all(step.items() >= want.items() for step, want in zip(steps["pretokenizers"], expected))
        and (normalizer is None or json.loads(normalizer.__getstate__()) == {"type": "NFC"})
    )
    model_ok = (
        model.dropout is None
        and not model.ignore_merges
        and not model.continuing_subword_prefix
        and not model.end_of_word_suffix
    )
    added = tokenizer.get_added_tokens_decoder().values()
    added_ok = all(not (t.lstrip or t.rstrip or t.single_word or t.normalized) for t in added)
    return pipeline_ok and model_ok and added_ok


class BoundedEncoder:
    """`encode(texts, limits)` for one tokenizer (encoded without its post-processor's special tokens)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self._added_ids = frozenset(added)
        self._model = tokenizer.model
        self._boundaries = (
            TextBoundaries(tokenizer.pre_tokenizer, [t.content for t in added.values()])
            if qwen_pipeline(tokenizer)
            else None
        )
        self._longest_token = max(map(len, tokenizer.get_vocab(with_added_tokens=False)), default=1)

    def hard_cut(self, text: str, c: int) -> bool:
        """Whether encoding text[:c] and text[c:] apart gives the ids of encoding `text` (proven, never guessed)."""
        return self._boundaries is not None and self._boundaries.hard_cut(text, c)

    def encode(self, texts: Sequence[str], limits: Sequence[int]) -> list[tuple[list[int], bool]]:
        """For each text, its first `limit` token ids and whether it has more tokens than that."""
        results: list[tuple[list[int], bool]] = [([], False)] * len(texts)
        windows = [
            len(t) if self._boundaries is None else min(len(t), CHARS_PER_TOKEN * (n + 1) + 64)
            for t, n in zip(texts, limits, strict=True)
        ]
        pending = list(range(len(texts)))
        while pending:  # one encode_batch (parallel in the tokenizer) per round of windows
            encodings = self.tokenizer.encode_batch([texts[i][: windows[i]] for i in pending], add_special_tokens=False)
            unsettled = []
            for i, encoding in zip(pending, encodings):
                text, window, need = texts[i], windows[i], limits[i] + 1
                settled = len(encoding.ids) if window == len(text) else self._settled(text, window, encoding, need)
                if settled is None:
                    grow = window * need // max(len(encoding.ids), 1) + window // 4
                    windows[i] = min(len(text), max(2 * window, grow))
                    unsettled.append(i)
                else:
                    ids = encoding.ids[: min(settled, need)]
                    results[i] = (ids[: limits[i]], len(ids) > limits[i])
            pending = unsettled
        return results

    def _settled(self, text: str, window: int, encoding: Encoding, need: int) -> int | None:
        """How many leading tokens of the window's encoding are proven to be the text's, if at least `need`."""
        assert self._boundaries is not None
        ids, words = encoding.ids, encoding.word_ids  # (not encoding.offsets: quadratic in the window)
        if len(ids) < need:
            return None
        tries = 0
        for i in range(need, len(ids)):  # a hard cut at a word start after the wanted tokens
            if words[i] != words[i - 1]:
                cut = encoding.token_to_chars(i)[0]
                if cut + NFC_CONTEXT >= window or tries == MAX_TRIES:
                    break
                if self._boundaries.hard_cut(text, cut):
                    return i
                tries += 1
        last = bisect_left(words, words[-1])  # the window's last pre-token: ids[last:]
        start = encoding.token_to_chars(last)[0]
        if ids[last] in self._added_ids or not self._boundaries.long_run(text, start, window):
            return None
        if last >= need:
            return last
        inside = self._bpe_cut(ids[last:], need - last)
        return None if inside is None else last + inside

    def _bpe_cut(self, word: list[int], need: int) -> int | None:
        """The first j >= need such that word[:j] begins the encoding of every continuation of the window's
        bytes of this pre-token (module docstring, step 3)."""
        pieces = [self.tokenizer.id_to_token(i) for i in word]  # byte-level strings: one character a byte
        ends = list(accumulate(map(len, pieces)))
        spelled = "".join(pieces)
        for j in range(need, min(len(word), need + MAX_TRIES)):
            if ends[-1] - ends[j - 1] < self._longest_token:
                return None
            if self._compatible_with_any(word[j - 1], pieces[j - 1], spelled, ends[j - 1]):
                return j
        return None

    def _compatible_with_any(self, left: int, left_piece: str, spelled: str, at: int) -> bool:
        """Whether token `left` forms a valid pair with every token that can begin the encoding of spelled[at:]."""
        model, longest = self._model, self._longest_token

        @cache
        def openings(at: int, depth: int) -> tuple[tuple[int, str], ...]:
            """Tokens that can begin the encoding of a text starting with spelled[at:]: they spell a prefix of
            it, encode to themselves and, while `depth` lasts and the window shows a longest token's worth of
            bytes after them, have a compatible successor that can begin the rest in turn. Each condition
            holds of the first token of every encoding (Corollary II), so the real first token is among them."""
            found = []
            for length in range(1, min(longest, len(spelled) - at) + 1):
                piece = spelled[at : at + length]
                token = model.token_to_id(piece)
                if token is None or [t.id for t in model.tokenize(piece)] != [token]:
                    continue
                after = at + length
                if (
                    depth == 0
                    or len(spelled) - after < longest
                    or any(self._pair(token, piece, *successor) for successor in openings(after, depth - 1))
                ):
                    found.append((token, piece))
            return tuple(found)

        return all(self._pair(left, left_piece, *right) for right in openings(at, LOOKAHEAD))

    def _pair(self, left: int, left_piece: str, right: int, right_piece: str) -> bool:
        """Whether (left, right) is the encoding of their concatenated bytes."""
        return [t.id for t in self._model.tokenize(left_piece + right_piece)] == [left, right]
