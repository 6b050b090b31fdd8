"""The list bound of request bodies: counted on the JSON text before anything is decoded, exact at the bound
whatever the items hold, in bounded memory for a million tiny items, and not applied to one input's token ids."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("fastapi")

from qrerank.serving import list_bound
from qrerank.serving.api.cohere import RerankRequest
from qrerank.serving.api.openai import EmbeddingsRequest
from qrerank.serving.body import decode
from qrerank.serving.errors import ApiError
from qrerank.serving.list_bound import ListBound, raw_fields

FLOOD = 4 * 1024 * 1024


def _rerank(documents: list[Any]) -> bytes:
    return json.dumps({"query": "q", "documents": documents}).encode()


def _refused(schema: type, raw: bytes, max_items: int) -> ApiError:
    with pytest.raises(ApiError) as refused:
        decode(schema, raw, max_items)
    return refused.value


TRICKY = ['a, "b"], [c', "}{,,", '\\"],', {"text": "x, y", "title": "[1, 2, {3}]"}, "", "\u00e9,\u4e2d"]


@pytest.mark.parametrize("count", [1, 2, 5, 6])
def test_the_bound_is_exact_whatever_the_items_hold(count: int) -> None:
    """Commas, brackets and escaped quotes inside texts and nested objects are not item separators."""
    documents = (TRICKY * 2)[:count]
    if count <= 5:
        assert decode(RerankRequest, _rerank(documents), 5).documents == documents
    else:
        error = _refused(RerankRequest, _rerank(documents), 5)
        assert error.status == 413
        assert error.message == "documents holds more than 5 items; this server accepts at most 5"


def test_whitespace_and_nesting_around_items_are_counted_right() -> None:
    raw = b'{"query": "q", "documents" :\n [ "a" ,\t{"text": "b,c", "k": "[,]"} , "d" ] }'
    assert len(decode(RerankRequest, raw, 3).documents) == 3
    assert _refused(RerankRequest, raw, 2).status == 413


def test_one_texts_token_ids_are_not_bounded_but_lists_of_inputs_are() -> None:
    ids = list(range(5000))
    assert decode(EmbeddingsRequest, json.dumps({"input": ids}).encode(), 2).input == ids
    assert decode(EmbeddingsRequest, json.dumps({"input": [ids]}).encode(), 2).input == [ids]
    for too_many in (["a", "b", "c"], [[1], [2], [3]], [1, "a", "b"]):
        error = _refused(EmbeddingsRequest, json.dumps({"input": too_many}).encode(), 2)
        assert error.status == 413 and "input holds more than 2 items" in error.message


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    except ApiError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("schema", "prefix", "item"),
    [
        (RerankRequest, b'{"query": "q", "documents": [', b'"a"'),
        (RerankRequest, b'{"query": "q", "documents": [', b'{"text": "a"}'),
        (EmbeddingsRequest, b'{"input": [', b'"a"'),
        (EmbeddingsRequest, b'{"input": [', b"[1]"),
    ],
)
def test_a_flood_of_valid_items_is_refused_in_bounded_memory(schema: type, prefix: bytes, item: bytes) -> None:
    """Checked by msgspec's max_length, these million items were all built first: 58-96 MB out of 4 MiB."""
    raw = prefix + b",".join([item] * (FLOOD // (len(item) + 1))) + b"]}"
    assert _refused(schema, raw, 2048).status == 413
    peak = _peak(lambda: decode(schema, raw, 2048))
    assert peak < 2**20, f"refusing the flood took {peak / 2**20:.1f} MiB"


def test_a_million_ignored_fields_cost_no_object_each() -> None:
    """The fields are found by a Struct reading them as raw JSON, not by a dict of every key (56 MB here)."""
    raw = b'{"query": "q", "documents": ["a"], ' + b",".join(b'"k%d": 1' % i for i in range(400_000)) + b"}"
    assert decode(RerankRequest, raw, 2048).documents == ["a"]
    assert _peak(lambda: decode(RerankRequest, raw, 2048)) < 2**20
    assert _peak(lambda: raw_fields(raw, ("documents", "inputs"))) < 2**20
    fields = raw_fields(raw, ("documents", "inputs"))
    assert fields is not None and set(fields) == {"documents"} and bytes(fields["documents"]) == b'["a"]'
    assert raw_fields(b"[1]", ("documents",)) is None and raw_fields(b"{", ("documents",)) is None


def _counting_raw_fields(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the whole-body msgspec passes `decode` makes to find the list fields."""
    calls: list[int] = []

    def counted(raw: bytes, names: tuple[str, ...]) -> dict[str, memoryview] | None:
        calls.append(len(raw))
        return raw_fields(raw, names)

    monkeypatch.setattr(list_bound, "raw_fields", counted)
    return calls


@pytest.mark.parametrize("item", [b"1", b"{}", b'"a"'])
def test_a_flood_is_refused_from_its_first_items(monkeypatch: pytest.MonkeyPatch, item: bytes) -> None:
    """Found by walking the body's first items, not by msgspec's pass over all 4 MiB, which holds the GIL
    (and with it the event loop) for 20-30 ms a body: under a flood, every other request waited."""
    calls = _counting_raw_fields(monkeypatch)
    raw = b'{"query": "q", "documents": [' + b",".join([item] * (FLOOD // (len(item) + 1))) + b"]}"
    assert _refused(RerankRequest, raw, 2048).status == 413
    assert calls == []


def test_the_walk_reads_keys_as_json_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """An escaped key names the same field, and a repeated key is bounded at each occurrence."""
    calls = _counting_raw_fields(monkeypatch)
    escaped = b'{"query": "q", "docu\\u006dents": ["a", "b", "c"]}'
    assert json.loads(escaped)["documents"] == ["a", "b", "c"]
    assert _refused(RerankRequest, escaped, 2).status == 413
    repeated = b'{"query": "q", "documents": ["a", "b", "c"], "documents": ["a"]}'
    assert _refused(RerankRequest, repeated, 2).status == 413
    assert calls == []


def test_items_too_rich_to_walk_are_counted_by_msgspec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its budget of steps the walk hands over to the whole-body pass, which gives the same answers."""
    calls = _counting_raw_fields(monkeypatch)
    rich = {f"field{i}": "x, [y]" for i in range(40)}  # ~80 steps an item: 2 items pass the 80-step budget
    assert decode(RerankRequest, _rerank([rich, rich]), 2).documents == [rich, rich]
    assert _refused(RerankRequest, _rerank([rich, rich, rich]), 2).status == 413
    assert len(calls) == 2


def _prefix_refusals(raw: bytes, max_items: int) -> list[int]:
    """The lengths of the prefixes of `raw` that check_prefix refuses."""
    bound = ListBound.of(RerankRequest, max_items)
    refused = []
    for end in range(1, len(raw) + 1):
        try:
            bound.check_prefix(raw[:end])
        except ApiError as error:
            assert error.status == 413
            refused.append(end)
    return refused


@pytest.mark.parametrize("count", [3, 5, 6, 9])
def test_a_prefix_is_refused_only_where_the_whole_body_is(count: int) -> None:
    """Cut anywhere (inside a string full of commas and brackets, inside an escape, between items), the first
    bytes of a body within the bound are never refused, and one over it is refused from the item past it on."""
    documents = (["x,,,,,,,,", '"],[', "\\", *TRICKY] * 2)[:count]
    raw = _rerank(documents)
    refused = _prefix_refusals(raw, 5)
    if count <= 5:
        assert decode(RerankRequest, raw, 5).documents == documents and refused == []
    else:
        assert _refused(RerankRequest, raw, 5).status == 413
        fifth_comma = raw.index(json.dumps(documents[5]).encode()) - 2  # the ", " before the sixth item
        assert refused == list(range(fifth_comma + 1, len(raw) + 1))
