"""Where Qwen3's tokenization of a text may be cut: positions whose tokens never depend on what follows.

Qwen3's tokenizer, in order: added tokens (`<|im_end|>`, `<think>`, ...) are matched on the raw text;
each stretch between them is NFC-normalised, split into pre-tokens by `QWEN_PATTERN`, and each
pre-token is byte-level BPE-encoded on its own. A position `c` is a *hard cut* of `text` when

    tokens(text) == tokens(text[:c]) + tokens(text[c:])                                    (1)

whatever follows. (1) holds when none of the three stages joins text across `c`:

- added tokens: either an occurrence starts at `c` and none covers both `text[c - 1]` and `text[c]`
  (then `c` ends a stretch), or none lies within NFC_CONTEXT of `c` (then `c` is inside one);
- NFC: the first character of NFD(text[c]) is a starter (combining class 0) that is the second
  character of no canonical composition, so nothing before `c` reorders or composes with what
  follows (`nfc_cut`). The characters the pattern sees on either side, `x` and `y`, are then the
  NFC of a few characters around `c`;
- the pattern: leftmost-first alternation with greedy runs and one lookahead, `(?!\\S)`. Every
  alternative tried at a position reads a *run* (letters, digits one at a time, a punctuation run
  and its trailing newlines, a whitespace run) and stops at the first character outside it, or
  reads at most three characters (the contractions). So the pre-tokens before `c` are decided
  without reading past `c`, and the same as at the end of the text, when `x` ends its run and `y`
  cannot continue it, case by case (`hard_cut`):
    x a digit                    `\\p{N}` takes one character; nothing else takes a digit.
    y a digit, x not whitespace  likewise; a whitespace run before a digit is not settled
                                 (`\\s+(?!\\S)` keeps its last space when a non-space follows).
    x a letter, y not a letter   `\\p{L}+` stops, and contractions end in a letter.
    x other, y a space           a punctuation run stops and `[\\r\\n]*` takes no space (other: not a
                                 letter, digit or whitespace).
    x a newline, y not a space   `\\s*[\\r\\n]+` and `[\\r\\n]*` stop at a non-space, which
                                 `[^\\r\\n\\p{L}\\p{N}]?` cannot take after a newline either.
  The pattern has no lookbehind, so the pre-tokens from `c` on are those of `text[c:]`.

Proven here, then, is (1) at the cuts `hard_cut` accepts; `tests/test_bounded.py` checks it, and
`long_run`, against the real tokenizer at every position of thousands of adversarial texts. Character
classes are not taken from Python's Unicode tables (their version may differ from the tokenizer's regex
engine) but asked of the tokenizer's own pre-tokenizer (`char_class`).

A pre-token can also be megabytes long (a run of letters, CJK without punctuation, emoji, spaces):
`long_run` says when the last pre-token of a window is the prefix of a longer one; the cut inside it
is then settled at the level of BPE (`qrerank.bounded`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache

from tokenizers import pre_tokenizers

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LETTER, DIGIT, SPACE, NEWLINE, OTHER = "letter", "digit", "space", "newline", "other"  # SPACE: \s but not \r, \n
WHITESPACE = (SPACE, NEWLINE)
UNICODE_WHITE_SPACE = (  # the White_Space property: what \s may match
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
NFC_CONTEXT = 32  # characters searched around a cut for NFC-independent neighbours


@cache
def composition_seconds() -> frozenset[str]:
    """Characters that canonical composition can join to the character before them (Hangul vowels and
    trailing consonants included). Computed once from Python's Unicode tables: normalisation stability
    guarantees that no later Unicode version adds a composition of characters assigned in this one."""
    seconds = {chr(c) for c in range(0x1161, 0x1176)} | {chr(c) for c in range(0x11A8, 0x11C3)}
    for code in range(0x30000):  # canonical decompositions end below U+2FA1E
        mapping = unicodedata.decomposition(chr(code))
        if mapping and not mapping.startswith("<") and len(parts := mapping.split()) == 2:
            seconds.add(chr(int(parts[1], 16)))
    return frozenset(seconds)


def nfc_cut(text: str, i: int) -> bool:
    """NFC(text) == NFC(text[:i]) + NFC(text[i:]): text[i] decomposes to a starter that composes with nothing
    before it. Unassigned characters are refused: a newer Unicode version may make them combining marks."""
    if i <= 0 or i >= len(text):
        return True
    ch = text[i]
    if unicodedata.category(ch) in ("Cn", "Cs"):
        return False
    first = unicodedata.normalize("NFD", ch)[0]
    return unicodedata.combining(first) == 0 and first not in composition_seconds()


def neighbours(text: str, c: int, after: int) -> tuple[str, str] | None:
    """(x, y): the last character before `c` and the first `after` characters from `c` of NFC(text), for a
    cut `c` that NFC does not cross; None where no NFC-independent stretch is found within NFC_CONTEXT."""
    if not nfc_cut(text, c):
        return None
    start = next((a for a in range(c - 1, max(c - NFC_CONTEXT, 0) - 1, -1) if nfc_cut(text, a)), None)
    if start is None:
        return None
    right = ""
    for end in range(c + 1, min(c + NFC_CONTEXT, len(text)) + 1):
        if nfc_cut(text, end):
            right = unicodedata.normalize("NFC", text[c:end])
            if len(right) >= after or end == len(text):
                break
    if len(right) < after:
        return None
    return unicodedata.normalize("NFC", text[start:c])[-1], right[:after]


class TextBoundaries:
    """Hard cuts and long runs of texts for one tokenizer (its pre-tokenizer must be `QWEN_PATTERN`'s).

    `added`: the added-token strings the tokenizer matches in texts (none when special tokens are text).
    """

    def __init__(self, pre_tokenizer: pre_tokenizers.PreTokenizer, added: Sequence[str]) -> None:
        self._pre_tokenizer = pre_tokenizer
        self._added = tuple(a for a in added if len(a) > 1)
        self._ascii = tuple(self._probe(chr(c)) for c in range(128))
        spaces = "".join(ch for ch in UNICODE_WHITE_SPACE if self.char_class(ch) == SPACE)
        self._not_space = re.compile(f"[^{re.escape(spaces)}]")

    def char_class(self, ch: str) -> str:
        """LETTER, DIGIT, SPACE, NEWLINE or OTHER, as the tokenizer's own pattern engine classifies `ch`."""
        return self._ascii[ord(ch)] if ch < "\x80" else self._probe(ch)

    def _probe(self, ch: str) -> str:
        def pieces(s: str) -> int:
            return len(self._pre_tokenizer.pre_tokenize_str(s))

        if ch in "\r\n":
            return NEWLINE
        if pieces("a" + ch) == 1:  # `\p{L}+` runs on
            return LETTER
        if pieces(ch + ch) == 2:  # only `\p{N}` takes a single character of a doubled one
            return DIGIT
        if pieces("!" + ch) == 2:  # a punctuation run stops, and `[\r\n]*` does not take it
            return SPACE
        return OTHER

    def _added_token_near(self, text: str, c: int) -> bool:
        """Whether an added token occurs within NFC_CONTEXT characters of `c`."""
        return any(text.find(a, max(c - NFC_CONTEXT - len(a), 0), c + NFC_CONTEXT + len(a)) >= 0 for a in self._added)

    def hard_cut(self, text: str, c: int) -> bool:
        """Equation (1) of the module docstring holds at `c` (0 < c < len(text))."""
        if self._added_token_near(text, c):  # then only where an added token's match must start
            spans = any(text.find(a, max(c - len(a) + 1, 0), c + len(a) - 1) >= 0 for a in self._added)
            return not spans and any(text.startswith(a, c) for a in self._added)
        around = neighbours(text, c, 1)
        if around is None:
            return False
        x, y = (self.char_class(ch) for ch in around)
        return (
            x == DIGIT
            or (y == DIGIT and x not in WHITESPACE)
            or (x == LETTER and y != LETTER)
            or (x == OTHER and y == SPACE)
            or (x == NEWLINE and y not in WHITESPACE)
        )

    def long_run(self, text: str, start: int, end: int) -> bool:
        """Whether the pre-token text[start:end], the last of the window text[:end], is the beginning of a
        pre-token of `text` (maybe all of it), and the pre-tokens before `start` are settled.

        True when the characters around `end` (NFC) are three of one run class, `end` is a cut for NFC and
        no added token is near. Letters: the match is `[^\\r\\n\\p{L}\\p{N}]?\\p{L}+` in both texts, running on
        in `text`. Other: ` ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*` likewise. Whitespace: the match in `text` takes at
        least as much (the last newline of a longer run is later; `\\s+(?!\\S)` leaves only the run's last
        character, two or more past `end`); and an earlier pre-token of the same whitespace run, whose
        match read the whole run to take up to its last newline, is settled only if the run starts at or
        after `start`, or has no newline after `end`. The other pre-tokens before `start` stopped reading
        at the first character outside their run. More than three characters: not a contraction.
        """
        if end - start <= 3 or self._added_token_near(text, end):
            return False
        around = neighbours(text, end, 2)
        if around is None:
            return False
        classes = {self.char_class(ch) for ch in around[0] + around[1]}
        if classes <= {LETTER} or classes <= {OTHER}:
            return True
        if not classes <= set(WHITESPACE):
            return False
        if start == 0 or self._no_newline_in_run(text, end):
            return True
        first = neighbours(text, start, 1)
        return first is not None and not {self.char_class(ch) for ch in first[0] + first[1]} <= set(WHITESPACE)

    def _no_newline_in_run(self, text: str, end: int) -> bool:
        """Whether the whitespace run through text[end] holds no newline from `end` on (a scan at C speed)."""
        found = self._not_space.search(text, end)
        return found is None or (found[0] not in "\r\n" and self.char_class(found[0]) not in WHITESPACE)
