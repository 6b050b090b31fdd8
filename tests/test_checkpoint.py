"""The checkpoint loader: layouts, sharding, tied/untied heads, fused weights, dtypes, tokenizers, and every refusal."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from qrerank import Embedder, Reranker, checkpoint
from qrerank.model import ModelWeights
from qrerank.safetensors_reader import read_header
from qrerank.testing import random_checkpoint
from qrerank.tokenize import bundled_tokenizer_json

SHARED = Path(__file__).resolve().parents[2] / "shared"
YES, NO = 9693, 2152
QUERY = "what is the capital of Japan"
DOCS = ["Tokyo is the capital of Japan.", "Bananas are yellow.", "", "Kyoto was the capital until 1868. " * 5]
TEXTS = ["Tokyo is the capital of Japan.", "Bananas are yellow.", "", "Instruct: find\nQuery:capital"]
LOAD = dict(device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=512)


@pytest.fixture(scope="module")
def sharded_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same seed as the session `reranker_dir`, split over 3 files."""
    return random_checkpoint(tmp_path_factory.mktemp("sharded_reranker"), "tiny", "reranker", seed=1, shards=3)


@pytest.fixture(scope="module")
def sharded_embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same seed as the session `embedding_dir`, split over 3 files."""
    return random_checkpoint(tmp_path_factory.mktemp("sharded_embedding"), "tiny", "embedding", seed=2, shards=3)


@pytest.fixture(scope="module")
def embedding_seed1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights of `reranker_dir` (seed 1, tied) in the Qwen3Model layout (no `model.` prefix)."""
    return random_checkpoint(tmp_path_factory.mktemp("embedding_seed1"), "tiny", "embedding", seed=1)


@pytest.fixture(scope="module")
def untied_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("untied"), "tiny", "reranker", seed=3, tie_word_embeddings=False)


@pytest.fixture
def cached_tokenizer(monkeypatch: pytest.MonkeyPatch, reranker: Reranker) -> None:
    """For tests about weights and files: reuse the session tokenizer instead of parsing tokenizer.json again."""
    monkeypatch.setattr(checkpoint, "load_tokenizer", lambda path, config: reranker.prompt.tokenizer)


def clone(src: Path, dst: Path) -> Path:
    """A copy the test may edit; tokenizer.json (never edited, only removed) is linked, not copied."""
    dst.mkdir()
    for file in src.iterdir():
        if file.name == "tokenizer.json":
            (dst / file.name).symlink_to(file)
        else:
            shutil.copy(file, dst)
    return dst


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def expected_layer(tensors: dict[str, torch.Tensor], prefix: str, i: int) -> dict[str, torch.Tensor]:
    """What LayerWeights field holds for layer i, built from the file's tensors."""
    p = f"{prefix}layers.{i}."
    return {
        "input_norm": tensors[p + "input_layernorm.weight"],
        "qkv": torch.cat([tensors[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
        "q_norm": tensors[p + "self_attn.q_norm.weight"],
        "k_norm": tensors[p + "self_attn.k_norm.weight"],
        "o_proj": tensors[p + "self_attn.o_proj.weight"],
        "post_norm": tensors[p + "post_attention_layernorm.weight"],
        "gate_up": torch.cat([tensors[p + "mlp.gate_proj.weight"], tensors[p + "mlp.up_proj.weight"]]),
        "down": tensors[p + "mlp.down_proj.weight"],
    }


def assert_weights_equal(
    weights: ModelWeights, tensors: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype
) -> None:
    """Every loaded tensor equals the file's, converted to `dtype`, bit for bit."""
    assert torch.equal(weights.embed, tensors[prefix + "embed_tokens.weight"].to(dtype))
    assert torch.equal(weights.norm, tensors[prefix + "norm.weight"].to(dtype))
    assert len(weights.layers) == 2
    for i, layer in enumerate(weights.layers):
        for field, want in expected_layer(tensors, prefix, i).items():
            got = getattr(layer, field)
            assert got.dtype == dtype and torch.equal(got, want.to(dtype)), (i, field)


# ---------------------------------------------------------------- layouts, shards, heads, fusion, dtypes


def test_sharded_and_single_file_load_the_same_weights(
    reranker: Reranker, embedder: Embedder, sharded_reranker_dir: Path, sharded_embedding_dir: Path
) -> None:
    for path in (sharded_reranker_dir, sharded_embedding_dir):
        assert len(list(path.glob("model-0000?-of-00003.safetensors"))) == 3
        assert not (path / "model.safetensors").exists() and (path / "model.safetensors.index.json").is_file()
    sharded = Reranker(sharded_reranker_dir, **LOAD)
    np.testing.assert_array_equal(sharded.score(QUERY, DOCS), reranker.score(QUERY, DOCS))
    assert torch.equal(sharded.engine.head_rows, reranker.engine.head_rows)
    sharded_embedder = Embedder(sharded_embedding_dir, **LOAD)
    np.testing.assert_array_equal(sharded_embedder.embed(TEXTS), embedder.embed(TEXTS))
    assert np.ptp(embedder.embed(TEXTS)) > 0.1


def test_sharded_weights_match_the_files(sharded_embedding_dir: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(sharded_embedding_dir.glob("*.safetensors")):
        tensors |= load_file(file)
    assert_weights_equal(Embedder(sharded_embedding_dir, **LOAD).engine.model.weights, tensors, "", torch.float32)


def test_fused_weights_equal_the_concatenated_projections(reranker: Reranker, reranker_dir: Path) -> None:
    tensors = load_file(reranker_dir / "model.safetensors")
    weights = reranker.engine.model.weights
    layer0 = weights.layers[0]
    p = "model.layers.0."
    assert torch.equal(layer0.qkv, torch.cat([tensors[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]))
    gate_up = torch.cat([tensors[p + "mlp.gate_proj.weight"], tensors[p + "mlp.up_proj.weight"]])
    assert torch.equal(layer0.gate_up, gate_up)
    assert layer0.qkv.shape == (4 * 64 + 2 * 2 * 64, 64) and layer0.gate_up.shape == (2 * 160, 64)
    assert_weights_equal(weights, tensors, "model.", torch.float32)


def test_tied_head_rows_come_from_embed_tokens(reranker: Reranker, reranker_dir: Path) -> None:
    assert reranker.prompt.yes_no_ids == (YES, NO)
    embed = load_file(reranker_dir / "model.safetensors")["model.embed_tokens.weight"]
    head = reranker.engine.model.weights.head_rows
    assert head is not None and head.dtype == torch.float32
    assert torch.equal(head, embed[[YES, NO]])


def test_untied_head_rows_come_from_lm_head(untied_reranker_dir: Path) -> None:
    tensors = load_file(untied_reranker_dir / "model.safetensors")
    assert "lm_head.weight" in tensors
    head = Reranker(untied_reranker_dir, **LOAD).engine.model.weights.head_rows
    assert head is not None
    assert torch.equal(head, tensors["lm_head.weight"][[YES, NO]])
    assert not torch.equal(head, tensors["model.embed_tokens.weight"][[YES, NO]])
    # The embedder needs no head: lm_head.weight is tolerated and unused.
    embedder = Embedder(untied_reranker_dir, **LOAD)
    assert embedder.engine.model.weights.head_rows is None
    assert torch.equal(embedder.engine.model.weights.embed, tensors["model.embed_tokens.weight"])


@pytest.mark.usefixtures("cached_tokenizer")
def test_tied_checkpoint_with_a_stored_lm_head_ignores_it(
    reranker: Reranker, reranker_dir: Path, tmp_path: Path
) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    edit_tensors(path / "model.safetensors", lambda t: t.update({"lm_head.weight": torch.randn(151669, 64)}))
    np.testing.assert_array_equal(Reranker(path, **LOAD).score(QUERY, DOCS), reranker.score(QUERY, DOCS))


def test_both_layouts_give_the_same_model(reranker: Reranker, reranker_dir: Path, embedding_seed1_dir: Path) -> None:
    assert not any(name.startswith("model.") for name in load_file(embedding_seed1_dir / "model.safetensors"))
    # A Reranker on a tied embedding-kind (Qwen3Model) checkpoint: head from the unprefixed embed_tokens.
    np.testing.assert_array_equal(Reranker(embedding_seed1_dir, **LOAD).score(QUERY, DOCS), reranker.score(QUERY, DOCS))
    # An Embedder on a reranker-kind (Qwen3ForCausalLM) checkpoint, whose tokenizer appends nothing.
    from_causal_lm = Embedder(reranker_dir, **LOAD)
    assert not from_causal_lm.prompt.tokenizer_appends_eos
    from_model = Embedder(embedding_seed1_dir, **LOAD)
    assert from_model.prompt.tokenizer_appends_eos
    np.testing.assert_array_equal(from_causal_lm.embed(TEXTS), from_model.embed(TEXTS))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_in_half_precision(reranker_dir: Path, dtype: torch.dtype) -> None:
    reranker = Reranker(reranker_dir, **{**LOAD, "dtype": dtype})
    assert reranker.dtype == dtype
    tensors = load_file(reranker_dir / "model.safetensors")
    weights = reranker.engine.model.weights
    assert_weights_equal(weights, tensors, "model.", dtype)
    # head rows: rounded to the model dtype, then kept in fp32 for the dot product
    assert weights.head_rows is not None and weights.head_rows.dtype == torch.float32
    assert torch.equal(weights.head_rows, tensors["model.embed_tokens.weight"][[YES, NO]].to(dtype).float())
    scores = reranker.score(QUERY, DOCS)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()


def test_bf16_checkpoint_upcasts_exactly_to_fp32(tmp_path: Path) -> None:
    path = random_checkpoint(tmp_path / "bf16", "tiny", "embedding", seed=4, dtype=torch.bfloat16)
    tensors = load_file(path / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    embedder = Embedder(path, **LOAD)
    assert embedder.dtype == torch.float32
    assert_weights_equal(embedder.engine.model.weights, tensors, "", torch.float32)


# ---------------------------------------------------------------- tokenizers


def test_missing_tokenizer_json_falls_back_to_the_bundled_tokenizer(
    reranker: Reranker, embedder: Embedder, reranker_dir: Path, embedding_dir: Path, tmp_path: Path
) -> None:
    rr = clone(reranker_dir, tmp_path / "reranker")
    em = clone(embedding_dir, tmp_path / "embedding")
    for path in (rr, em):
        (path / "tokenizer.json").unlink()
    fallback = Reranker(rr, **LOAD)
    pairs = [(QUERY, doc) for doc in DOCS]
    assert fallback.prompt.encode(pairs, None) == reranker.prompt.encode(pairs, None)
    np.testing.assert_array_equal(fallback.score(QUERY, DOCS), reranker.score(QUERY, DOCS))
    # The bundled tokenizer has no post-processor; the ids (with <|endoftext|> appended) must not change.
    fallback_embedder = Embedder(em, **LOAD)
    assert not fallback_embedder.prompt.tokenizer_appends_eos and embedder.prompt.tokenizer_appends_eos
    assert fallback_embedder.prompt.encode(TEXTS, None) == embedder.prompt.encode(TEXTS, None)
    np.testing.assert_array_equal(fallback_embedder.embed(TEXTS), embedder.embed(TEXTS))


@pytest.mark.parametrize("keep_tokenizer", [True, False])
def test_vocab_size_smaller_than_the_tokenizer(reranker_dir: Path, tmp_path: Path, keep_tokenizer: bool) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    shutil.copy(reranker_dir / "config.json", path)
    if keep_tokenizer:
        shutil.copy(reranker_dir / "tokenizer.json", path)
    edit_json(path / "config.json", lambda c: c.update(vocab_size=1000))
    with pytest.raises(ValueError, match=r"151669 tokens but config.json vocab_size is 1000"):
        Reranker(path, **LOAD)


TOKENIZER_TEXTS = [
    "Hello world",
    "yes no",
    "<|im_start|>system\nJudge whether<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "text<|endoftext|>more",
    "Instruct: Given a web search query\nQuery:what is qwen",
    "  leading spaces\t\ttabs\r\n",
    "Ünïcödé déjà vu, 日本語のテキスト, emoji 🙂👍🏽",
    "",
]


def _shared_tokenizer(name: str) -> Tokenizer:
    path = SHARED / name / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return Tokenizer.from_file(str(path))


def _assert_same_encodings(ours: Tokenizer, theirs: Tokenizer) -> None:
    assert ours.get_vocab(with_added_tokens=True) == theirs.get_vocab(with_added_tokens=True)
    for add_special_tokens in (True, False):
        for text in TOKENIZER_TEXTS:
            want = theirs.encode(text, add_special_tokens=add_special_tokens)
            got = ours.encode(text, add_special_tokens=add_special_tokens)
            assert got.ids == want.ids, (text, add_special_tokens)
            assert got.offsets == want.offsets, (text, add_special_tokens)
        pair = (TOKENIZER_TEXTS[0], TOKENIZER_TEXTS[4])
        want_pair = theirs.encode(*pair, add_special_tokens=add_special_tokens).ids
        assert ours.encode(*pair, add_special_tokens=add_special_tokens).ids == want_pair
    assert ours.decode(ours.encode(TOKENIZER_TEXTS[6]).ids) == theirs.decode(theirs.encode(TOKENIZER_TEXTS[6]).ids)


def test_bundled_tokenizer_matches_the_qwen3_tokenizer() -> None:
    theirs = _shared_tokenizer("qwen3-tokenizer")
    ours = Tokenizer.from_str(bundled_tokenizer_json())
    _assert_same_encodings(ours, theirs)
    assert ours.encode("yes", add_special_tokens=False).ids == [YES]
    assert ours.encode("no", add_special_tokens=False).ids == [NO]


def test_embedding_tokenizer_matches_the_qwen3_embedding_tokenizer(embedding_dir: Path) -> None:
    theirs = _shared_tokenizer("qwen3-embedding-tokenizer")
    ours = Tokenizer.from_file(str(embedding_dir / "tokenizer.json"))
    _assert_same_encodings(ours, theirs)
    assert ours.encode("Hello world").ids == [9707, 1879, 151643]


# ---------------------------------------------------------------- refusals: tensors


TENSOR_EDITS: list[Any] = [
    pytest.param(
        lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
        "missing tensor 'model.layers.1.mlp.up_proj.weight'",
        id="missing",
    ),
    pytest.param(
        lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}),
        "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'",
        id="unexpected",
    ),
    pytest.param(
        lambda t: t.update({"model.norm.weight": torch.ones(63)}),
        "tensor 'model.norm.weight' has shape [63], expected [64]",
        id="misshaped",
    ),
    pytest.param(
        lambda t: t.update({"model.layers.1.self_attn.o_proj.weight": torch.zeros(256, 64)}),
        "tensor 'model.layers.1.self_attn.o_proj.weight' has shape [256, 64], expected [64, 256]",
        id="transposed",
    ),
    pytest.param(
        lambda t: t.update({"lm_head.weight": torch.zeros(10, 64)}),
        "tensor 'lm_head.weight' has shape [10, 64], expected [151669, 64]",
        id="misshaped-optional-head",
    ),
    pytest.param(
        lambda t: t.update({"model.norm.weight": torch.ones(64, dtype=torch.int32)}),
        "tensor 'model.norm.weight' has dtype 'I32'",
        id="int32",
    ),
    pytest.param(
        lambda t: t.update({"model.norm.weight": torch.ones(64, dtype=torch.uint8)}),
        "tensor 'model.norm.weight' has dtype 'U8'",
        id="uint8",
    ),
]


@pytest.mark.parametrize(("edit", "message"), TENSOR_EDITS)
@pytest.mark.usefixtures("cached_tokenizer")
def test_bad_tensors(
    reranker_dir: Path, tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], None], message: str
) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    edit_tensors(path / "model.safetensors", edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        Reranker(path, **LOAD)


@pytest.mark.usefixtures("cached_tokenizer")
def test_missing_tensor_in_the_unprefixed_layout(embedding_dir: Path, tmp_path: Path) -> None:
    path = clone(embedding_dir, tmp_path / "ckpt")
    edit_tensors(path / "model.safetensors", lambda t: t.pop("layers.0.self_attn.k_norm.weight"))
    with pytest.raises(ValueError, match=re.escape("missing tensor 'layers.0.self_attn.k_norm.weight'")):
        Embedder(path, **LOAD)


@pytest.mark.usefixtures("cached_tokenizer")
def test_untied_config_without_lm_head(reranker_dir: Path, tmp_path: Path) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    edit_json(path / "config.json", lambda c: c.update(tie_word_embeddings=False))
    with pytest.raises(ValueError, match=re.escape("missing tensor 'lm_head.weight'")):
        Reranker(path, **LOAD)
    Embedder(path, **LOAD)  # embeddings never read the head


# ---------------------------------------------------------------- refusals: shards and index


def _shard(path: Path, n: int) -> Path:
    return path / f"model-{n:05d}-of-00003.safetensors"


def _index_points(name: str, file: str) -> Callable[[dict[str, Any]], None]:
    return lambda index: index["weight_map"].update({name: file})


INDEX_EDITS: list[Any] = [
    pytest.param(
        _index_points("model.norm.weight", "model-00000-missing.safetensors"),
        r"lists model-00000-missing\.safetensors, which is not in ",
        id="file-does-not-exist",
    ),
    pytest.param(
        _index_points("model.norm.weight", "model-00001-of-00003.safetensors"),
        r"tensor 'model\.norm\.weight' is in model-00003-of-00003\.safetensors but "
        r"model\.safetensors\.index\.json places it in 'model-00001-of-00003\.safetensors'",
        id="wrong-file",
    ),
    pytest.param(
        lambda index: index["weight_map"].pop("model.norm.weight"),
        r"tensor 'model\.norm\.weight' is in model-00003-of-00003\.safetensors",
        id="unlisted",
    ),
    pytest.param(
        _index_points("model.extra.weight", "model-00002-of-00003.safetensors"),
        r"lists tensor 'model\.extra\.weight', which none of its files holds",
        id="listed-not-stored",
    ),
]


@pytest.mark.parametrize(("edit", "message"), INDEX_EDITS)
@pytest.mark.usefixtures("cached_tokenizer")
def test_bad_index(
    sharded_reranker_dir: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = clone(sharded_reranker_dir, tmp_path / "ckpt")
    edit_json(path / "model.safetensors.index.json", edit)
    with pytest.raises(ValueError, match=message):
        Reranker(path, **LOAD)


@pytest.mark.usefixtures("cached_tokenizer")
@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="invalid-json"),
        pytest.param('{"metadata": {}}', id="no-weight_map"),
    ],
)
def test_unreadable_index(sharded_reranker_dir: Path, tmp_path: Path, content: str) -> None:
    path = clone(sharded_reranker_dir, tmp_path / "ckpt")
    (path / "model.safetensors.index.json").write_text(content)
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json"):
        Reranker(path, **LOAD)


@pytest.mark.usefixtures("cached_tokenizer")
def test_tensor_stored_twice_across_shards(sharded_reranker_dir: Path, tmp_path: Path) -> None:
    path = clone(sharded_reranker_dir, tmp_path / "ckpt")
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.0.input_layernorm.weight"
    assert index[name] == _shard(path, 1).name  # listed (and read first) in shard 1
    copy = load_file(_shard(path, 1))[name]
    edit_tensors(_shard(path, 2), lambda t: t.update({name: copy}))
    message = f"tensor {name!r} is stored twice ({_shard(path, 1).name} and {_shard(path, 2).name})"
    with pytest.raises(ValueError, match=re.escape(message)):
        Reranker(path, **LOAD)


# ---------------------------------------------------------------- refusals: file contents


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _garbage_header(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 64) + np.random.default_rng(1).bytes(64) + bytes(256))


def _impossible_header_length(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(data)) + data[8:])


def _truncate(keep: int | None) -> Callable[[Path], None]:
    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2 if keep is None else keep])

    return truncate


FILE_DAMAGE: list[Any] = [
    pytest.param(_random_bytes, r"not a safetensors file|corrupt safetensors header", id="random-bytes"),
    pytest.param(_garbage_header, r"corrupt safetensors header", id="garbage-header"),
    pytest.param(_impossible_header_length, r"header length \d+ is impossible", id="header-length"),
    pytest.param(_truncate(5), r"shorter than its 8-byte header length", id="truncated-5-bytes"),
    pytest.param(_truncate(200), r"header length \d+ is impossible", id="truncated-in-header"),
    pytest.param(
        _truncate(None), r"tensor '[^']+' has a byte range .* that does not fit its shape", id="truncated-in-data"
    ),
    pytest.param(_truncate(0), r"shorter than its 8-byte header length", id="empty-file"),
]


@pytest.mark.parametrize(("damage", "message"), FILE_DAMAGE)
@pytest.mark.usefixtures("cached_tokenizer")
def test_damaged_safetensors_file(
    reranker_dir: Path, tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    damage(path / "model.safetensors")
    with pytest.raises(ValueError, match=message) as info:
        Reranker(path, **LOAD)
    assert str(path / "model.safetensors") in str(info.value)


def _header_file(path: Path, header: Any) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(64))
    return path


MALFORMED_HEADERS: list[Any] = [
    pytest.param([], id="not-an-object"),
    pytest.param({"w": 5}, id="entry-not-an-object"),
    pytest.param({"w": {"dtype": "F32", "data_offsets": [0, 8]}}, id="no-shape"),
    pytest.param({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, id="offset-before-data"),
]


@pytest.mark.parametrize("header", MALFORMED_HEADERS)
def test_malformed_header_is_refused(tmp_path: Path, header: Any) -> None:
    path = _header_file(tmp_path / "model.safetensors", header)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_header(path)


@pytest.mark.usefixtures("cached_tokenizer")
def test_pickle_weights_are_refused(reranker_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(reranker_dir / name, path)
    (path / "pytorch_model.bin").write_bytes(b"not unpickled, never opened")
    with pytest.raises(ValueError, match=r"no \.safetensors weights") as info:
        Reranker(path, **LOAD)
    message = str(info.value)
    assert "pytorch_model.bin" in message and "pickle" in message and "safetensors" in message


@pytest.mark.usefixtures("cached_tokenizer")
def test_no_weights_at_all(reranker_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    shutil.copy(reranker_dir / "config.json", path)
    with pytest.raises(ValueError, match=rf"no \.safetensors weights in {re.escape(str(path))}: "):
        Embedder(path, **LOAD)


# ---------------------------------------------------------------- refusals: config.json


def _config_edit(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update(changes)


def _config_drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.pop(key)


CONFIG_EDITS: list[Any] = [
    pytest.param(_config_edit(model_type="llama"), r"model_type is 'llama'", id="model_type"),
    pytest.param(_config_drop("model_type"), r"model_type is None", id="no-model_type"),
    pytest.param(_config_edit(attention_bias=True), r"attention_bias=true is not supported", id="attention_bias"),
    pytest.param(_config_edit(hidden_act="gelu"), r"hidden_act 'gelu' is not supported", id="hidden_act"),
    pytest.param(_config_edit(use_sliding_window=True), r"use_sliding_window=true", id="sliding_window"),
    pytest.param(_config_edit(rope_scaling={"rope_type": "yarn", "factor": 4.0}), r"rope type 'yarn'", id="rope-yarn"),
    pytest.param(_config_edit(rope_scaling={"type": "linear", "factor": 2.0}), r"rope type 'linear'", id="rope-legacy"),
    pytest.param(
        _config_edit(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e6}),
        r"rope type 'dynamic'",
        id="rope_parameters",
    ),
    pytest.param(_config_drop("hidden_size"), r"missing required field 'hidden_size'", id="no-hidden_size"),
    pytest.param(_config_drop("num_hidden_layers"), r"missing required field 'num_hidden_layers'", id="no-layers"),
    pytest.param(_config_drop("vocab_size"), r"missing required field 'vocab_size'", id="no-vocab_size"),
    pytest.param(
        _config_edit(hidden_size="64"), r"hidden_size must be an integer from 1 to 65536, got '64'", id="hidden-str"
    ),
    pytest.param(
        _config_edit(num_hidden_layers=0), r"num_hidden_layers must be an integer from 1 to 1024", id="layers-0"
    ),
    pytest.param(_config_edit(num_attention_heads=3), r"num_attention_heads \(3\) is not a multiple", id="gqa"),
    pytest.param(_config_edit(head_dim=31), r"head_dim must be even", id="odd-head_dim"),
    pytest.param(_config_edit(rms_norm_eps=0), r"rms_norm_eps must be a finite number > 0, got 0\.0", id="eps-0"),
    pytest.param(_config_edit(rms_norm_eps=None), r"rms_norm_eps must be a number, got None", id="eps-null"),
    pytest.param(_config_edit(rope_theta="big"), r"rope_theta must be a number", id="theta-str"),
]


@pytest.mark.parametrize(("edit", "message"), CONFIG_EDITS)
def test_bad_config(reranker_dir: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    shutil.copy(reranker_dir / "config.json", path)
    edit_json(path / "config.json", edit)
    with pytest.raises(ValueError, match=message) as info:
        Reranker(path, **LOAD)
    assert "config.json" in str(info.value)


@pytest.mark.usefixtures("cached_tokenizer")
def test_transformers5_rope_parameters_are_accepted(reranker: Reranker, reranker_dir: Path, tmp_path: Path) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")

    def nest(config: dict[str, Any]) -> None:
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.pop("rope_theta")}
        config.pop("rope_scaling")

    edit_json(path / "config.json", nest)
    np.testing.assert_array_equal(Reranker(path, **LOAD).score(QUERY, DOCS), reranker.score(QUERY, DOCS))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_config_that_is_not_a_json_object(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json"))):
        Reranker(tmp_path, **LOAD)


def test_no_config_json(reranker_dir: Path, tmp_path: Path) -> None:
    shutil.copy(reranker_dir / "model.safetensors", tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"no config.json in checkpoint directory {re.escape(str(tmp_path))}"):
        Embedder(tmp_path, **LOAD)


# ---------------------------------------------------------------- refusals: the model argument


def test_model_path_that_is_a_file(reranker_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"is a file; pass the checkpoint directory"):
        Reranker(reranker_dir / "config.json", **LOAD)


@pytest.mark.parametrize("model", ["/nonexistent/dir", "not a hub id", "./missing/model", "a/b/c", Path("/nowhere")])
def test_model_that_is_neither_a_directory_nor_a_hub_id(model: str | Path) -> None:
    with pytest.raises(ValueError, match=rf"model {re.escape(repr(str(model)))} is neither an existing directory"):
        Reranker(model, **LOAD)


def test_model_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"model must be a directory path or a Hugging Face hub id, got int"):
        Embedder(3, **LOAD)  # type: ignore[arg-type]


def test_hub_id_offline_with_an_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    # huggingface_hub reads HF_HUB_OFFLINE and the cache location once, at import: patch the module too.
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(tmp_path)), ("HF_HUB_CACHE", str(tmp_path / "hub"))):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(ValueError, match=r"model 'Qwen/Qwen3-Reranker-0\.6B' is not a local directory.*HF_HUB_OFFLINE"):
        Reranker("Qwen/Qwen3-Reranker-0.6B", **LOAD)
    assert attempts == []  # offline mode was honoured: no connection was even tried
    assert not os.path.exists(tmp_path / "hub" / "models--Qwen--Qwen3-Reranker-0.6B" / "snapshots")


def test_hub_id_offline_loads_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reranker_dir: Path, reranker: Reranker
) -> None:
    """A hub id resolves to a snapshot already in huggingface_hub's cache, with no network access."""
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--Qwen--Qwen3-Reranker-0.6B"
    shutil.copytree(reranker_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("network access attempted"))
    from_hub = Reranker("Qwen/Qwen3-Reranker-0.6B", **LOAD)
    np.testing.assert_array_equal(from_hub.score("q", ["a", "bb"]), reranker.score("q", ["a", "bb"]))
