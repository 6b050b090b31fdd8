"""Checkpoint forms people hold: seq-cls rerankers, sentence-transformers folders, short contexts, bf16/fp16 files.

Parity is checked against the libraries those forms come from: transformers' Qwen3ForSequenceClassification
and sentence-transformers' SentenceTransformer, run on the very same random checkpoint folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qrerank import Embedder, Reranker
from qrerank.cli import main
from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION
from qrerank.testing import NO_ID, ST_PROMPTS, YES_ID, random_checkpoint

LOAD = dict(device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=512)
QUERY = "what is the capital of Japan"
DOCS = ["Tokyo is the capital of Japan.", "Bananas are yellow.", "", "Kyoto was the capital until 1868. " * 40]
TEXTS = ["Tokyo is the capital of Japan.", "Bananas are yellow.", "x", "日本の首都は東京です 🙂", "long text " * 200]


@pytest.fixture(scope="module")
def seq_cls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session `reranker_dir` (seed 1, tied) converted to Qwen3ForSequenceClassification."""
    return random_checkpoint(tmp_path_factory.mktemp("seq_cls"), "tiny", "seq-cls", seed=1)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session `embedding_dir` (seed 2) with the sentence-transformers files of Qwen3-Embedding."""
    return random_checkpoint(tmp_path_factory.mktemp("st"), "tiny", "embedding", seed=2, sentence_transformers=True)


@pytest.fixture(scope="module")
def st_embedder(st_dir: Path) -> Embedder:
    return Embedder(st_dir, **LOAD)


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


# ---------------------------------------------------------------- seq-cls rerankers


def test_seq_cls_conversion_is_the_public_one(seq_cls_dir: Path, reranker_dir: Path) -> None:
    config = json.loads((seq_cls_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"] and config["id2label"] == {"0": "LABEL_0"}
    converted, original = load_file(seq_cls_dir / "model.safetensors"), load_file(reranker_dir / "model.safetensors")
    assert "lm_head.weight" not in converted and converted["score.weight"].shape == (1, 64)
    embed = original["model.embed_tokens.weight"]  # tied: the LM head
    assert torch.equal(converted["score.weight"][0], embed[YES_ID] - embed[NO_ID])
    assert set(converted) - {"score.weight"} == set(original)


@pytest.mark.parametrize("tied", [True, False])
def test_seq_cls_scores_equal_the_original(tmp_path: Path, reranker: Reranker, seq_cls_dir: Path, tied: bool) -> None:
    if tied:
        original, converted = reranker, Reranker(seq_cls_dir, **LOAD)
    else:
        kw: dict[str, Any] = dict(seed=3, tie_word_embeddings=False)
        original = Reranker(random_checkpoint(tmp_path / "original", "tiny", "reranker", **kw), **LOAD)
        converted = Reranker(random_checkpoint(tmp_path / "converted", "tiny", "seq-cls", **kw), **LOAD)
    for raw in (False, True):
        want = original.score(QUERY, DOCS, raw=raw)
        np.testing.assert_allclose(converted.score(QUERY, DOCS, raw=raw), want, rtol=0, atol=1e-6)
    assert np.ptp(original.score(QUERY, DOCS)) > 0.01


def test_seq_cls_matches_transformers_sequence_classification(seq_cls_dir: Path) -> None:
    from transformers import AutoTokenizer, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(seq_cls_dir, padding_side="left")
    model = Qwen3ForSequenceClassification.from_pretrained(seq_cls_dir, dtype=torch.float32).eval()
    # The official template, written out independently of qrerank's prompt code; left padding, last token.
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    head = tokenizer.encode(prefix, add_special_tokens=False)
    tail = tokenizer.encode(suffix, add_special_tokens=False)
    bodies = [f"<Instruct>: {DEFAULT_RERANK_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {doc}" for doc in DOCS]
    budget = LOAD["max_length"] - len(head) - len(tail)
    ids = [head + body[:budget] + tail for body in tokenizer(bodies, add_special_tokens=False)["input_ids"]]
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
    np.testing.assert_allclose(Reranker(seq_cls_dir, **LOAD).score(QUERY, DOCS), want, rtol=0, atol=1e-5)


def _edit_tensors(path: Path, edit: Any) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(lambda t: t.pop("score.weight"), r"missing tensor 'score\.weight'", id="no-score"),
        pytest.param(
            lambda t: t.update({"lm_head.weight": torch.zeros(151669, 64)}),
            r"unexpected tensor 'lm_head\.weight'",
            id="lm-head-too",
        ),
        pytest.param(
            lambda t: t.update({"score.weight": torch.zeros(2, 64)}),
            r"'score\.weight' is a two-label head \[2, H\]; .*\(num_labels=1\)",
            id="two-labels",
        ),
        pytest.param(
            lambda t: t.update({"score.weight": torch.zeros(1, 32)}),
            r"'score\.weight' has shape \[1, 32\], expected \[1, 64\]",
            id="misshaped",
        ),
    ],
)
def test_seq_cls_tensors_are_checked(seq_cls_dir: Path, tmp_path: Path, edit: Any, message: str) -> None:
    path = copy_of(seq_cls_dir, tmp_path / "ckpt")
    _edit_tensors(path, edit)
    with pytest.raises(ValueError, match=message):
        Reranker(path, **LOAD)


def test_score_head_only_with_the_seq_cls_architecture(seq_cls_dir: Path, tmp_path: Path) -> None:
    path = copy_of(seq_cls_dir, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    edit_json(path / "config.json", config | {"architectures": ["Qwen3ForCausalLM"]})
    with pytest.raises(ValueError, match=r"unexpected tensor 'score\.weight'"):
        Reranker(path, **LOAD)


# ---------------------------------------------------------------- sentence-transformers folders


def test_sentence_transformers_parity(st_dir: Path, st_embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_dir), device="cpu")
    st.max_seq_length = LOAD["max_length"]  # the long text is cut at the same token
    for prompt_name in ("query", "document", None):
        want = st.encode(TEXTS, prompt_name=prompt_name, normalize_embeddings=True)
        got = st_embedder.embed(TEXTS, prompt_name=prompt_name)
        assert (np.sum(want * got, axis=1) >= 0.99999).all(), prompt_name
    assert np.min(st_embedder.embed(TEXTS) @ st_embedder.embed(TEXTS).T) < 0.9  # well spread vectors


def test_prompts_are_raw_prefixes(st_embedder: Embedder, embedder: Embedder) -> None:
    assert st_embedder.prompts == ST_PROMPTS and st_embedder.default_prompt_name is None
    # The query prompt is the official instruction format: the same ids, so the same vectors.
    np.testing.assert_array_equal(
        st_embedder.embed(TEXTS, prompt_name="query"), embedder.embed(TEXTS, instruction=DEFAULT_RERANK_INSTRUCTION)
    )
    np.testing.assert_array_equal(st_embedder.embed(TEXTS, prompt_name="document"), embedder.embed(TEXTS))
    np.testing.assert_array_equal(
        st_embedder.embed(TEXTS, prompt="Represent: "), embedder.embed(["Represent: " + t for t in TEXTS])
    )
    assert embedder.prompts == {}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(prompt_name="passage"), ValueError, r"prompt_name 'passage' is not one of this model's prompts"),
        (dict(prompt_name="query", prompt="x"), ValueError, r"at most one of instruction, prompt_name and prompt"),
        (dict(instruction="i", prompt="x"), ValueError, r"at most one of instruction, prompt_name and prompt"),
        (dict(prompt=3), TypeError, r"prompt must be a str, got int"),
    ],
)
def test_bad_prompt_arguments(st_embedder: Embedder, kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        st_embedder.embed(["a"], **kwargs)


def test_default_prompt_name_applies_when_none_is_given(st_dir: Path, tmp_path: Path, embedder: Embedder) -> None:
    path = copy_of(st_dir, tmp_path / "ckpt")
    edit_json(path / "config_sentence_transformers.json", {"prompts": ST_PROMPTS, "default_prompt_name": "query"})
    with_default = Embedder(path, **LOAD)
    query = embedder.embed(TEXTS, instruction=DEFAULT_RERANK_INSTRUCTION)
    np.testing.assert_array_equal(with_default.embed(TEXTS), query)
    np.testing.assert_array_equal(with_default.embed(TEXTS, prompt_name="document"), embedder.embed(TEXTS))


POOLING_LEGACY = {f"pooling_mode_{m}": False for m in ("cls_token", "mean_tokens", "max_tokens", "lasttoken")}
BAD_FOLDERS: list[Any] = [
    pytest.param(
        "1_Pooling/config.json",
        POOLING_LEGACY | {"pooling_mode_mean_tokens": True},
        r"sets pooling mode \['mean_tokens'\]; qrerank embeds by last-token pooling only",
        id="legacy-mean",
    ),
    pytest.param("1_Pooling/config.json", {"pooling_mode": "cls"}, r"sets pooling mode 'cls'", id="cls"),
    pytest.param(
        "1_Pooling/config.json",
        {"pooling_mode": ["lasttoken", "mean"]},
        r"sets pooling mode \['lasttoken', 'mean'\]",
        id="two-modes",
    ),
    pytest.param(
        "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        ],
        r"lists the modules \['Transformer', 'Pooling', 'Dense'\]",
        id="dense",
    ),
    pytest.param(
        "modules.json",
        [{"idx": 1, "name": "1", "path": "../elsewhere", "type": "sentence_transformers.models.Pooling"}],
        r"lists the modules \['Pooling'\]",
        id="no-transformer",
    ),
    pytest.param(
        "config_sentence_transformers.json",
        {"prompts": {"query": 5}},
        r"'prompts' must map prompt names to texts",
        id="prompt-not-text",
    ),
    pytest.param(
        "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": "query"},
        r"default_prompt_name 'query' is not one of its prompts",
        id="default-unknown",
    ),
]


@pytest.mark.parametrize(("file", "content", "message"), BAD_FOLDERS)
def test_sentence_transformers_folder_that_qrerank_would_embed_differently(
    st_dir: Path, tmp_path: Path, file: str, content: Any, message: str
) -> None:
    path = copy_of(st_dir, tmp_path / "ckpt")
    edit_json(path / file, content)
    with pytest.raises(ValueError, match=message) as info:
        Embedder(path, **LOAD)
    assert str(path) in str(info.value)


def test_pooling_config_missing(st_dir: Path, tmp_path: Path) -> None:
    path = copy_of(st_dir, tmp_path / "ckpt")
    (path / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json is missing"):
        Embedder(path, **LOAD)


# ---------------------------------------------------------------- defaults derived from the model


@pytest.fixture(scope="module")
def short_context_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("short")
    return {
        kind: random_checkpoint(root / kind, "tiny", kind, seed=5, max_position_embeddings=4096)
        for kind in ("reranker", "embedding")
    }


def test_short_context_defaults(short_context_dirs: dict[str, Path]) -> None:
    for cls, kind in ((Reranker, "reranker"), (Embedder, "embedding")):
        model = cls(short_context_dirs[kind], device="cpu")
        assert model.engine.options.max_length == 4096
        with pytest.raises(ValueError, match=r"max_length=8192 exceeds the model's max_position_embeddings \(4096\)"):
            cls(short_context_dirs[kind], device="cpu", max_length=8192)


def test_long_context_default_is_8192(reranker_dir: Path) -> None:
    assert Reranker(reranker_dir, device="cpu").engine.options.max_length == 8192  # max_position_embeddings 40960


def test_cli_defaults_fit_a_short_context(
    short_context_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["embed", "--model", str(short_context_dirs["embedding"]), "--device", "cpu", "hello"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]) == 64
    served: list[Any] = []
    monkeypatch.setattr("qrerank.serving.server.serve", lambda app, **kwargs: served.append(app))
    argv = ["serve", "--model", str(short_context_dirs["reranker"]), "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(served) == 1


# ---------------------------------------------------------------- stored dtypes


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["reranker", "seq-cls", "embedding"])
def test_half_precision_files_load_to_every_dtype(tmp_path: Path, stored: torch.dtype, kind: str) -> None:
    path = random_checkpoint(tmp_path / "ckpt", "tiny", kind, seed=6, dtype=stored)
    tensors = load_file(path / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {stored}
    prefix = "" if kind == "embedding" else "model."
    for target in (torch.float32, torch.bfloat16, torch.float16):
        model = (Embedder if kind == "embedding" else Reranker)(path, **{**LOAD, "dtype": target})
        weights = model.engine.model.weights
        assert torch.equal(weights.embed, tensors[prefix + "embed_tokens.weight"].to(target))
        assert torch.equal(weights.layers[1].down, tensors[prefix + "layers.1.mlp.down_proj.weight"].to(target))
        if kind == "seq-cls":
            assert torch.equal(weights.head_rows, tensors["score.weight"].to(target).float())
        out = model.embed(TEXTS[:2]) if isinstance(model, Embedder) else model.score(QUERY, DOCS[:2])
        assert np.isfinite(out).all()  # short inputs: half-precision matmuls are slow on a CPU
