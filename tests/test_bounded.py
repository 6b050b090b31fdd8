"""Bounded encoding gives exactly the ids of encoding the whole text and cutting, and reads only a window.

The real Qwen3 tokenizer on adversarial texts (no spaces, CJK, digits, emoji, runs of one letter,
whitespace runs, mixed scripts, decomposed accents, control tokens, cuts inside a merge), at many
limits; the two proofs of `qrerank.boundaries` are also checked one by one against the tokenizer.
"""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from qrerank.boundaries import DIGIT, LETTER, NEWLINE, OTHER, SPACE, TextBoundaries
from qrerank.bounded import BoundedEncoder, qwen_pipeline
from qrerank.tokenize import bundled_tokenizer_json

PIECES = [
    "a", "Z", "中", "文", "é", "e\u0301", "1", "²", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "!", "'",
    "'s", "'LL", ".", "🚀", "👍🏽", "\ufe0f", "\u200d", "<|im_end|>", "<think>", "\u1100", "\u1161", "\u11a8",
    "가", "\u0301", "\x85", "\u2028", "$", "ﬁ", "\u0915\u093c", "ab", "the ", "\U000e0001",
]  # fmt: skip


def adversarial_texts(rng: random.Random) -> list[str]:
    mixed = "".join(rng.choice(PIECES) for _ in range(3000))
    return [
        "a" * 5000,
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6000)),  # one pre-token: the cut lands inside merges
        "".join(rng.choices("中文日本語한국어的是了", k=3000)),
        "".join(rng.choices("0123456789", k=3000)),
        "🚀" * 800 + "👍🏽" * 400,
        " " * 20000 + "x",
        "x\n" + "\t" * 9000 + "y",
        "!\n  \n" + " " * 9000,
        "\n\n \n" * 900,
        "e\u0301" * 2000,
        ("Der Donaudampfschifffahrtsgesellschaftskapitän " * 40) + "a" * 3000,
        "abc" * 300 + "!" * 4000 + "<|im_end|>" * 3 + "x" * 2000,
        mixed,
        "".join(rng.choice(PIECES) * rng.choice([1, 5, 60]) for _ in range(300)),
    ]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_str(bundled_tokenizer_json())


@pytest.fixture(scope="module")
def encoder(tokenizer: Tokenizer) -> BoundedEncoder:
    return BoundedEncoder(tokenizer)


def test_equals_whole_encoding_cut_on_adversarial_texts(tokenizer: Tokenizer, encoder: BoundedEncoder) -> None:
    rng = random.Random(0)
    for text in adversarial_texts(rng):
        full = tokenizer.encode(text, add_special_tokens=False).ids
        limits = sorted(
            {0, 1, 2, 3, 7, 64, 255, 1000, len(full) - 1, len(full), len(full) + 1, rng.randrange(len(full))}
        )
        limits = [n for n in limits if n >= 0]
        for limit, (ids, more) in zip(limits, encoder.encode([text] * len(limits), limits), strict=True):
            assert ids == full[:limit], (text[:40], limit)
            assert more == (len(full) > limit), (text[:40], limit)


class SpyTokenizer:
    """The tokenizer, recording the length of every text it is asked to encode."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def encode_batch(self, texts: list[str], add_special_tokens: bool) -> list:
        self.lengths += map(len, texts)
        return self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)

    def id_to_token(self, token: int) -> str:
        return self.tokenizer.id_to_token(token)


def test_reads_only_a_window_of_a_long_text(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Megabytes of letters, of English and of CJK: the tokenizer sees a few tens of thousands of characters."""
    encoder = BoundedEncoder(tokenizer)
    spy = SpyTokenizer(tokenizer)
    monkeypatch.setattr(encoder, "tokenizer", spy)
    texts = ["a" * (2 << 20), "the quick brown fox jumps " * 80_000, "中文日本語" * 400_000]
    results = encoder.encode(texts, [8191] * 3)
    assert [(len(ids), more) for ids, more in results] == [(8191, True)] * 3
    assert max(spy.lengths) < 120_000
    for text, (ids, _) in zip(texts, results, strict=True):
        assert ids == tokenizer.encode(text[:200_000], add_special_tokens=False).ids[:8191]


def test_hard_cuts_split_the_encoding(tokenizer: Tokenizer, encoder: BoundedEncoder) -> None:
    """Wherever `hard_cut` says so, encoding the two sides apart gives the ids of the whole."""
    rng = random.Random(1)
    cuts = 0
    for _ in range(800):
        text = "".join(rng.choice(PIECES) * rng.choice([1, 1, 2, 3]) for _ in range(rng.randrange(2, 8)))
        full = tokenizer.encode(text, add_special_tokens=False).ids
        for c in range(1, len(text)):
            if encoder.hard_cut(text, c):
                cuts += 1
                apart = tokenizer.encode_batch([text[:c], text[c:]], add_special_tokens=False)
                assert apart[0].ids + apart[1].ids == full, (text, c)
    assert cuts > 1000


def test_long_runs_are_prefixes_of_the_texts_pre_token(tokenizer: Tokenizer) -> None:
    """Wherever `long_run` says so, the window's tokens before its last pre-token are the text's, and the text
    has a pre-token starting there that covers the window's."""
    boundaries = TextBoundaries(
        tokenizer.pre_tokenizer, [t.content for t in tokenizer.get_added_tokens_decoder().values()]
    )
    rng = random.Random(2)
    runs = 0
    unsettled_runs = ["x\n" + "\t" * 12 + "\n", "a \n" + " " * 12 + "\r\nb", "!\n\n" + "\n" * 9 + " \n"]
    for text in unsettled_runs + [
        "".join(rng.choice(PIECES) * rng.choice([1, 2, 6, 9]) for _ in range(rng.randrange(2, 7))) for _ in range(300)
    ]:
        whole = tokenizer.encode(text, add_special_tokens=False)
        for end in range(4, len(text) - 1):
            window = tokenizer.encode(text[:end], add_special_tokens=False)
            first = window.word_ids.index(window.word_ids[-1])
            start = window.token_to_chars(first)[0]
            if not boundaries.long_run(text, start, end):
                continue
            runs += 1
            assert whole.ids[:first] == window.ids[:first], (text, end)
            word = whole.word_ids[first]
            assert first == 0 or whole.word_ids[first - 1] != word, (text, end)
            last = max(i for i, w in enumerate(whole.word_ids) if w == word)
            assert whole.token_to_chars(first)[0] == start and whole.token_to_chars(last)[1] >= end, (text, end)
    assert runs > 500


def test_character_classes_are_the_tokenizers(tokenizer: Tokenizer) -> None:
    boundaries = TextBoundaries(tokenizer.pre_tokenizer, [])
    expected = {"a": LETTER, "中": LETTER, "é": LETTER, "7": DIGIT, "²": DIGIT, " ": SPACE, "\u3000": SPACE}
    expected |= {"\n": NEWLINE, "\r": NEWLINE, "!": OTHER, "🚀": OTHER, "\u0301": OTHER, "'": OTHER}
    assert {ch: boundaries.char_class(ch) for ch in expected} == expected


def test_other_tokenizers_are_encoded_whole() -> None:
    """The proofs are about Qwen3's pipeline; a tokenizer with another one is encoded whole (exact, unbounded)."""
    words = models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")
    tokenizer = Tokenizer(words)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not qwen_pipeline(tokenizer)
    encoder = BoundedEncoder(tokenizer)
    assert encoder.encode(["a b " * 1000, "b"], [3, 3]) == [([1, 2, 1], True), ([2], False)]
    assert not encoder.hard_cut("a b", 1)


def test_bpe_certificate_refuses_a_boundary_that_later_bytes_merge_across(encoder: BoundedEncoder) -> None:
    """Inside one pre-token of spaces: 64 spaces then 128 more encode as [128, 64], so a window whose encoding
    has a boundary after 64 spaces proves nothing; after 128 spaces the boundary holds whatever follows."""
    space = "Ġ"  # the byte-level spelling of " "
    spelled = space * 600
    for settled, left in ((False, 64), (True, 128)):
        token = encoder.tokenizer.token_to_id(space * left)
        assert encoder._compatible_with_any(token, space * left, spelled, left) is settled
