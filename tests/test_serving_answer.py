"""JSON answers: the same JSON as the standard library's, written on a worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

pytest.importorskip("msgspec")

from qrerank.serving import answer


def test_answers_equal_the_standard_librarys_json_and_are_written_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    payload = {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)], "score": np.float32(0.25)}
    threads: list[int] = []
    plain = answer._plain

    def recording(value: object) -> object:
        threads.append(threading.get_ident())
        return plain(value)

    monkeypatch.setattr(answer, "_plain", recording)

    async def main() -> tuple[bytes, int]:
        response = await answer.json_answer(payload)
        return bytes(response.body), threading.get_ident()

    body, loop_thread = asyncio.run(main())
    expected = {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)], "score": 0.25}
    assert json.loads(body) == expected
    assert threads and loop_thread not in threads
    with pytest.raises(TypeError, match="cannot write a complex as JSON"):
        asyncio.run(answer.json_answer({"x": 1j}))
