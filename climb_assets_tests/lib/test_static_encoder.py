"""The static encoder (model2vec's format): distillation, encoding, bad folders, profile, CLI and
preflight.

A tiny random BERT (a WordPiece vocabulary of ~120 tokens, 32 wide) stands in for MiniLM, so the
whole distillation runs in a second; bench/static_encoder.py distils the real one.
"""

import itertools
import json
import shutil
import string

import numpy as np
import pytest

from climb_assets.config import ProfileError, load_profile
from climb_assets.lib.embed import EncoderError, TextEncoder, folder_revision
from climb_assets.lib.static_encoder import (
    TUNE_MODES,
    StaticEncoder,
    TuneSettings,
    check_static_folder,
    distill_static,
    fit_static,
    pca,
    sample_corpus,
    sif_weights,
    token_bags,
    tune_static,
)
from climb_assets_tests.conftest import write_jsonl, write_profile

# fmt: off
WORDS = [
    "the", "cat", "sat", "on", "mat", "tensor", "shape", "must", "match", "for", "element", "wise",
    "addition", "in", "torch", "select", "name", "from", "users", "where", "age", "order", "by",
    "amazon", "stores", "objects", "buckets", "short", "word", "data", "cluster", "token",
]
# fmt: on
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = [
    *SPECIAL,
    *(f"[unused{i}]" for i in range(6)),
    *string.ascii_lowercase,
    *string.digits,
    *".,;:!?()-'>",
    *WORDS,
    *(f"##{c}" for c in string.ascii_lowercase + string.digits),
    "##ing",
]
TEXTS = [
    "The cat sat on the mat.",
    "Tensor shapes must match for element-wise addition in torch.",
    "SELECT name FROM users WHERE age > 30 ORDER BY name;",
    "Amazon stores objects in buckets.",
    "short",
]
DIM = 8


def _tiny_bert(folder):
    """A random 1-layer BERT with a WordPiece tokenizer.json that truncates and pads at 16 (as
    MiniLM's does at 128), saved as a transformers folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    vocab = {token: i for i, token in enumerate(VOCAB)}
    assert len(vocab) == len(VOCAB)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(SPECIAL)
    tok.enable_truncation(16)
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": True,
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
                "model_max_length": 512,
            }
        )
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_kept():
    """Distilling with `threads` sets torch's global thread count; the other tests keep theirs."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return _tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def static_folder(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "static"
    distill_static(out, model=str(tiny_bert), dim=DIM, batch_size=16, threads=1)
    return out


@pytest.fixture(scope="module")
def encoder(static_folder):
    return StaticEncoder(str(static_folder), max_tokens=12, batch_size=2)


def _table(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))["embeddings"]


def _reference_vectors(folder, texts, max_tokens):
    """The vectors computed the plain way, in float64: each text's first `max_tokens` token ids
    (no special tokens), less [UNK], the mean of their rows, normalised; [UNK]'s row if none."""
    from tokenizers import Tokenizer

    table = _table(folder).astype(np.float64)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    unk = VOCAB.index("[UNK]")
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids[:max_tokens]
        kept = [i for i in ids if i != unk] or [unk]
        mean = table[kept].mean(0)
        out.append(mean / np.linalg.norm(mean))
    return np.array(out)


def test_distilled_folder_is_model2vec_format_and_records_its_source(tiny_bert, static_folder):
    layout = check_static_folder(static_folder)
    assert (layout.rows, layout.dim) == (len(VOCAB), DIM)
    assert not layout.has_weights and not layout.has_mapping
    config = json.loads((static_folder / "config.json").read_text())
    assert config["model_type"] == "model2vec" and config["normalize"] is True
    assert config["hidden_dim"] == DIM and config["embedding_dtype"] == "float32"
    built = config["climb"]
    assert built["model"] == str(tiny_bert)
    assert built["model_revision"] == folder_revision(tiny_bert)
    assert built["dim"] == DIM and built["sif_coefficient"] is None  # the default: unweighted
    assert config["sif_coefficient"] is None and config["apply_pca"] == DIM
    assert built["special_tokens"] == {"before": [VOCAB.index("[CLS]")], "after": [3]}
    assert built["pca_fit_tokens"] == len(VOCAB) - 6  # the [unusedN] tokens are left out
    assert sorted(p.name for p in static_folder.parent.iterdir()) == ["static"]  # no temp left
    # The tokenizer no longer truncates or pads (the source's did, at 16).
    saved = json.loads((static_folder / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None


def test_distillation_is_deterministic_and_refuses_to_overwrite(tiny_bert, static_folder, tmp_path):
    again = distill_static(tmp_path / "again", model=str(tiny_bert), dim=DIM, batch_size=16,
                           threads=1)  # fmt: skip
    assert (again.folder / "model.safetensors").read_bytes() == (
        static_folder / "model.safetensors"
    ).read_bytes()
    # Other batches round the forward pass differently; the table stays the same up to that.
    other = distill_static(tmp_path / "other", model=str(tiny_bert), dim=DIM, batch_size=7)
    np.testing.assert_allclose(_table(other.folder), _table(static_folder), atol=1e-5)
    with pytest.raises(EncoderError, match="already exists; pass --overwrite"):
        distill_static(again.folder, model=str(tiny_bert), dim=DIM)
    with pytest.raises(EncoderError, match="larger than .* hidden size 32"):
        distill_static(tmp_path / "wide", model=str(tiny_bert), dim=33)
    assert not (tmp_path / "wide").exists()


def test_token_rows_are_the_encoder_on_each_token_alone(tiny_bert, tmp_path):
    """Without SIF and with dim = hidden size the PCA is a rotation around the mean, so the rows'
    pairwise differences keep the geometry of the encoder's own pooled outputs."""
    out = distill_static(tmp_path / "full", model=str(tiny_bert), dim=32, sif_coefficient=None)
    table = _table(out.folder).astype(np.float64)
    import torch

    reference = TextEncoder(str(tiny_bert), device="cpu")
    words = ["cat", "tensor", "buckets", "age"]
    ids = [VOCAB.index(w) for w in words]

    with torch.inference_mode():
        batch = reference.tokenizer(words, return_tensors="pt", padding=True)
        hidden = reference.model(**batch).last_hidden_state.mean(1).numpy().astype(np.float64)
    assert batch["input_ids"].shape[1] == 3  # [CLS] word [SEP]
    d_ref = hidden[:, None] - hidden[None]
    d_ours = table[ids][:, None] - table[ids][None]
    np.testing.assert_allclose(
        np.linalg.norm(d_ours, axis=2), np.linalg.norm(d_ref, axis=2), rtol=1e-4, atol=1e-5
    )


def test_sif_scales_rows_by_zipf_rank_among_fitted_tokens(tiny_bert, static_folder, tmp_path):
    weighted = _table(distill_static(tmp_path / "sif", model=str(tiny_bert), dim=DIM,
                                     sif_coefficient=1e-4).folder)  # fmt: skip
    plain = _table(static_folder)
    fitted = [i for i, t in enumerate(VOCAB) if not t.startswith("[unused")]
    expected = sif_weights(len(fitted), 1e-4)
    np.testing.assert_allclose(weighted[fitted], plain[fitted] * expected[:, None], rtol=1e-5)
    unused = [i for i, t in enumerate(VOCAB) if t.startswith("[unused")]
    np.testing.assert_array_equal(weighted[unused], plain[unused])
    assert expected[0] < expected[-1] < 1.0  # frequent (low-rank) tokens weigh less
    with pytest.raises(EncoderError, match=r"--sif must be in \(0, 1\)"):
        distill_static(tmp_path / "bad", model=str(tiny_bert), dim=DIM, sif_coefficient=1.0)


def test_pca_sign_convention_makes_the_result_independent_of_svd_signs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    scores, explained = pca(x, 3)
    flipped, _ = pca(-x, 3)  # the same data up to the signs of its principal axes
    np.testing.assert_allclose(scores, flipped, atol=1e-10)
    largest = np.argmax(np.abs(scores), axis=0)
    assert (scores[largest, range(3)] > 0).all()
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(scores), np.abs(u[:, :3] * s[:3]), atol=1e-8)
    assert explained == pytest.approx(float((s[:3] ** 2).sum() / (s**2).sum()))


def test_rows_are_unit_length_deterministic_and_independent_of_batching(encoder, static_folder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert len({tuple(np.round(v, 5)) for v in vectors}) == len(TEXTS)
    # Same input, same bytes: again, and from a fresh load of the folder.
    fresh = StaticEncoder(str(static_folder), max_tokens=12, batch_size=2)
    assert encoder.encode(TEXTS).tobytes() == vectors.tobytes()
    assert fresh.encode(TEXTS).tobytes() == vectors.tobytes()
    reordered = encoder.encode(TEXTS[::-1])[::-1]
    big_batches = StaticEncoder(str(static_folder), max_tokens=12, batch_size=1000).encode(TEXTS)
    np.testing.assert_allclose(reordered, vectors, atol=1e-6)
    np.testing.assert_allclose(big_batches, vectors, atol=1e-6)
    one_by_one = StaticEncoder(str(static_folder), max_tokens=12, batch_size=1)
    assert one_by_one.encode(TEXTS).tobytes() == vectors.tobytes()  # a text's sum is its own
    assert encoder.info.dim == DIM and encoder.info.revision == folder_revision(static_folder)
    assert encoder.info.device == "cpu" and encoder.info.max_tokens == 12


class _CountingTokenizer:
    """A tokenizer that records the size of every batch it encodes."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_batch_fast(self, batch, **kwargs):
        self.calls.append(len(batch))
        return self.inner.encode_batch_fast(batch, **kwargs)


def test_encode_counted_is_encode_and_token_counts_from_one_tokenization(encoder, static_folder):
    texts = [*TEXTS, "", "§ ¤", "the cat sat on the mat " * 20]
    counting = StaticEncoder(str(static_folder), max_tokens=12, batch_size=2)
    counting.tokenizer = _CountingTokenizer(counting.tokenizer)
    seen: list[tuple[int, int]] = []
    vectors, counts = counting.encode_counted(texts, progress=lambda *a: seen.append(a))
    assert counting.tokenizer.calls == [len(texts)]  # every text tokenized once
    assert seen == [(2, 8), (4, 8), (6, 8), (8, 8)]  # batches of 2
    assert vectors.dtype == np.float32 and counts.dtype == np.int64
    assert vectors.tobytes() == encoder.encode(texts).tobytes()
    np.testing.assert_array_equal(counts, encoder.token_counts(texts))
    assert counts[5:].tolist() == [0, 2, 120]
    np.testing.assert_allclose(vectors, _reference_vectors(static_folder, texts, 12), atol=1e-6)
    empty_vectors, empty_counts = encoder.encode_counted([])
    assert empty_vectors.shape == (0, DIM) and empty_vectors.dtype == np.float32
    assert empty_counts.shape == (0,) and empty_counts.dtype == np.int64
    assert encoder.encode([]).shape == (0, DIM) and encoder.token_counts([]).shape == (0,)


def test_vector_is_the_normalised_mean_of_kept_token_rows(encoder, static_folder):
    table = _table(static_folder).astype(np.float64)
    text = "the cat sat on the mat § ¤"  # two unknown characters, dropped as model2vec does
    ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids
    assert ids.count(VOCAB.index("[UNK]")) == 2
    kept = [i for i in ids if i != VOCAB.index("[UNK]")]
    mean = table[kept].mean(0)
    np.testing.assert_allclose(encoder.encode([text])[0], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(encoder.encode([text]), encoder.encode(["the cat sat on the mat"]))
    # A text with no known token gets the unknown token's row, so every row has unit length.
    unk = table[VOCAB.index("[UNK]")]
    np.testing.assert_allclose(encoder.encode(["§"])[0], unk / np.linalg.norm(unk), atol=1e-6)


def test_token_counts_are_the_untruncated_counts_and_vectors_are_truncated(
    encoder, tiny_bert, static_folder
):
    from transformers import AutoTokenizer

    long_text = "the cat sat on the mat " * 20  # 120 tokens; max_tokens is 12, the source pads 16
    texts = [*TEXTS, long_text, "§ ¤"]
    reference = AutoTokenizer.from_pretrained(str(tiny_bert))
    expected = [len(ids) for ids in reference(texts, add_special_tokens=False)["input_ids"]]
    counts = encoder.token_counts(texts)
    assert counts.dtype == np.int64 and counts.tolist() == expected
    assert counts[-2] == 120 > encoder.max_tokens and counts[-1] == 2  # unknown tokens count
    np.testing.assert_array_equal(
        encoder.encode([long_text]), encoder.encode([long_text + " buckets " * 5])
    )
    # The vector uses exactly the first max_tokens (12) tokens: the 13th would change it.
    varied = "the cat sat on the mat tensor shape must match for element wise addition"
    assert encoder.token_counts([varied])[0] == 14
    vector = encoder.encode([varied])
    np.testing.assert_allclose(vector, _reference_vectors(static_folder, [varied], 12),
                               atol=1e-6)  # fmt: skip
    for wrong in (11, 13):
        reference = _reference_vectors(static_folder, [varied], wrong)
        assert np.abs(vector - reference).max() > 1e-3


def test_a_tokenizer_json_that_truncates_or_pads_changes_nothing(static_folder, tmp_path):
    from tokenizers import Tokenizer

    folder = tmp_path / "padded"
    shutil.copytree(static_folder, folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(4)
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.save(str(folder / "tokenizer.json"))
    padded = StaticEncoder(str(folder), max_tokens=12)
    plain = StaticEncoder(str(static_folder), max_tokens=12)
    assert padded.token_counts(TEXTS).tolist() == plain.token_counts(TEXTS).tolist()
    assert max(plain.token_counts(TEXTS)) > 4
    np.testing.assert_array_equal(padded.encode(TEXTS), plain.encode(TEXTS))


def test_model2vec_loads_the_folder_and_agrees(static_folder):
    model2vec = pytest.importorskip("model2vec")

    model = model2vec.StaticModel.from_pretrained(str(static_folder), force_download=False)
    long_text = "amazon stores objects in buckets by name " * 10
    texts = [*TEXTS, long_text]
    theirs = model.encode(texts, max_length=None)
    ours = StaticEncoder(str(static_folder), max_tokens=100_000).encode(texts)
    cos = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() > 0.999
    # model2vec's default truncation (512 tokens, when config.json names none) against ours.
    ours_default = StaticEncoder(str(static_folder), max_tokens=512).encode(TEXTS)
    assert np.sum(ours_default * model.encode(TEXTS), axis=1).min() > 0.999


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_folder", "does not exist"),
        ("model.safetensors", "has no model.safetensors"),
        ("tokenizer.json", "has no tokenizer.json"),
        ("config.json", "has no config.json"),
        ("bad_config", "config.json is not valid JSON"),
        ("bad_tensor_name", "has no tensor 'embeddings'"),
        ("not_safetensors", "is not a safetensors file"),
        ("wrong_rows", "'embeddings' has 3 rows but tokenizer.json has"),
        ("flat_table", rf"'embeddings' has shape \[{len(VOCAB)}\], expected \(vocabulary, dim\)"),
        ("short_weights", "'weights' has 3 entries for a vocabulary of"),
        ("bad_tokenizer", "is not a tokenizers file"),
    ],
)
def test_a_folder_not_in_model2vec_format_is_one_clear_line(
    static_folder, tmp_path, damage, message
):
    from safetensors.numpy import save_file

    folder = tmp_path / "copy"
    if damage != "no_folder":
        shutil.copytree(static_folder, folder)
    if damage in ("model.safetensors", "tokenizer.json", "config.json"):
        (folder / damage).unlink()
    elif damage == "bad_config":
        (folder / "config.json").write_text("{not json")
    elif damage == "bad_tensor_name":
        save_file({"embedding.weight": np.zeros((3, 2), np.float32)}, folder / "model.safetensors")
    elif damage == "not_safetensors":
        (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    elif damage == "wrong_rows":
        save_file({"embeddings": np.ones((3, 2), np.float32)}, folder / "model.safetensors")
    elif damage == "flat_table":
        save_file({"embeddings": np.ones(len(VOCAB), np.float32)}, folder / "model.safetensors")
    elif damage == "short_weights":
        table = _table(static_folder)
        save_file({"embeddings": table, "weights": np.ones(3, np.float32)},
                  folder / "model.safetensors")  # fmt: skip
    elif damage == "bad_tokenizer":
        (folder / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(EncoderError, match=message) as info:
        StaticEncoder(str(folder))
    text = str(info.value)
    assert "\n" not in text
    assert f"climb distill-static --out {folder}" in text and "model2vec's format" in text
    with pytest.raises(EncoderError) as checked:  # what preflight runs: the same line
        check_static_folder(folder)
    assert str(checked.value) == text


def test_a_mapping_outside_the_table_is_refused_and_a_good_one_is_used(static_folder, tmp_path):
    from safetensors.numpy import save_file

    table = _table(static_folder)
    folder = tmp_path / "mapped"
    shutil.copytree(static_folder, folder)
    # Two rows only: every token on row 0 except "cat", on row 1 (model2vec's `mapping`).
    mapping = np.zeros(len(VOCAB), np.int64)
    mapping[VOCAB.index("cat")] = 1
    rows = np.stack([table[VOCAB.index("the")], table[VOCAB.index("cat")]])
    save_file({"embeddings": rows, "mapping": mapping}, folder / "model.safetensors")
    mapped = StaticEncoder(str(folder))
    assert check_static_folder(folder).has_mapping and mapped.table.shape == (2, DIM)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(mapped.encode(["mat", "cat cat"]), unit, atol=1e-6)
    mapping[0] = 2
    save_file({"embeddings": rows, "mapping": mapping}, folder / "model.safetensors")
    with pytest.raises(EncoderError, match="'mapping' points outside the 2 rows"):
        StaticEncoder(str(folder))


def test_profile_kind_picks_the_encoder(static_folder, tmp_path, monkeypatch):
    from climb_assets.defs.data_side import text_encoder

    def profile(**encoder):
        return load_profile(str(write_profile(tmp_path, encoder=encoder)))

    assert profile().encoder.kind == "transformers"  # the default (demo's)
    built = text_encoder(profile(kind="static", model=str(static_folder)))
    assert isinstance(built, StaticEncoder) and built.info.max_tokens == 128
    assert built.info.source == str(static_folder.resolve())
    # A relative folder is found under CLIMB_HOME, as every other local location of a profile.
    monkeypatch.setenv("CLIMB_HOME", str(static_folder.parent))
    relative = text_encoder(profile(kind="static", model=static_folder.name, max_tokens=7))
    assert isinstance(relative, StaticEncoder) and relative.info.max_tokens == 7
    assert relative.info.revision == built.info.revision
    with pytest.raises(EncoderError, match="does not exist .*climb distill-static --out"):
        text_encoder(profile(kind="static", model=str(tmp_path / "none")))


def test_preflight_names_what_the_static_folder_lacks_and_the_fix(static_folder, tmp_path):
    from climb_assets.defs.resources import ClimbResource
    from climb_assets.preflight import PreflightError, check_profile

    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "shard-000.jsonl", [{"doc_id": "a", "text": TEXTS[0]}])

    def check(model):
        path = write_profile(tmp_path, corpus={"path": str(corpus)}, targets=[], kmeans={"k": 1},
                             encoder={"kind": "static", "model": str(model)})  # fmt: skip
        return check_profile(ClimbResource(profile=str(path)), search=False, log=lambda _: None)

    assert "encoder.model" in check(static_folder).checked
    broken = tmp_path / "broken"
    shutil.copytree(static_folder, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(PreflightError) as info:
        check(broken)
    report = str(info.value).splitlines()
    assert report[0].endswith("1 problem(s) found before any work started:"), report
    assert report[1:] == [
        f"  - encoder.model: static encoder folder {broken} has no tokenizer.json (model2vec's "
        "format: config.json, model.safetensors with 'embeddings', tokenizer.json); build one "
        f"with `climb distill-static --out {broken}`"
    ]


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ({"kind": "onnx"}, "encoder.kind: 'onnx' is not allowed"),
        ({"kind": "static", "model": "/m", "revision": "main"}, "encoder.revision does not apply"),
        ({"kind": "static", "model": "s3://bucket/m"}, "must be a local folder"),
    ],
)
def test_profile_rejects_bad_static_settings(tmp_path, encoder, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(str(write_profile(tmp_path, encoder=encoder)))


def test_cli_distills_a_folder_the_encoder_loads(tiny_bert, tmp_path, capsys):
    from climb_assets.cli import main

    out = tmp_path / "cli"
    argv = ["distill-static", "--out", str(out), "--model", str(tiny_bert), "--dim", "4"]
    assert main([*argv, "--sif", "1e-3", "--threads", "1"]) == 0
    assert f"encoder: {{kind: static, model: {out}}}" in capsys.readouterr().out
    assert StaticEncoder(str(out)).info.dim == 4
    assert json.loads((out / "config.json").read_text())["sif_coefficient"] == 1e-3
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--dim", "6"]) == 0
    assert StaticEncoder(str(out)).info.dim == 6
    assert json.loads((out / "config.json").read_text())["sif_coefficient"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]  # nothing left beside it
    assert main([*argv[:-1], "33", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("climb: error: distill-static: --dim 33 is larger than") and "\n" not in err
    )
    assert StaticEncoder(str(out)).info.dim == 6  # the folder it had is kept


def test_static_vectors_see_max_tokens_of_the_text(encoder):
    assert encoder.text_tokens == encoder.max_tokens == 12  # no special tokens added


def _tune_texts(n, seed=0):
    """`n` short seeded sentences of the tiny vocabulary's words (under the tiny BERT's 64
    positions)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def _tensors(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def tuned_folder(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "tuned"
    settings = TuneSettings(epochs=15, seed=3)
    distill_static(out, model=str(tiny_bert), dim=DIM, batch_size=16, threads=1,
                   tune_texts=_tune_texts(120), tune_settings=settings,
                   tune_source={"corpus": "tiny"})  # fmt: skip
    return out


def test_tuning_is_deterministic_for_a_seed_and_improves_the_fit(
    tiny_bert, tuned_folder, static_folder, tmp_path
):
    config = json.loads((tuned_folder / "config.json").read_text())
    tuning = config["climb"]["tuning"]
    assert tuning["documents"] == 120 and tuning["seed"] == 3 == config["climb"]["seed"]
    assert tuning["epochs"] == 15 and tuning["mode"] == "weights"
    assert tuning["source"] == {"corpus": "tiny"}
    assert tuning["loss_end"] < tuning["loss_start"]  # the fit moves towards the source encoder
    assert tuning["epoch_losses"][-1] < tuning["epoch_losses"][0]
    tensors = _tensors(tuned_folder)
    assert tensors["weights"].shape == (len(VOCAB),) and (tensors["weights"] > 0).all()
    assert tensors["embeddings"].shape == (len(VOCAB), DIM)
    assert check_static_folder(tuned_folder).has_weights
    again = distill_static(tmp_path / "again", model=str(tiny_bert), dim=DIM, batch_size=16,
                           threads=1, tune_texts=_tune_texts(120),
                           tune_settings=TuneSettings(epochs=15, seed=3))  # fmt: skip
    assert (again.folder / "model.safetensors").read_bytes() == (
        tuned_folder / "model.safetensors"
    ).read_bytes()
    other = distill_static(tmp_path / "seed4", model=str(tiny_bert), dim=DIM, batch_size=16,
                           threads=1, tune_texts=_tune_texts(120),
                           tune_settings=TuneSettings(epochs=15, seed=4))  # fmt: skip
    assert not np.array_equal(_tensors(other.folder)["weights"], tensors["weights"])
    # Untuned: the same table as before, and no weights.
    assert "weights" not in _tensors(static_folder)
    assert json.loads((static_folder / "config.json").read_text())["climb"]["tuning"] is None


def test_fit_static_lowers_the_loss_and_its_table_carries_the_fitted_geometry(static_folder):
    """The map folded into the table: the exported vectors through `readout` are the fitted
    predictions, so the loss of the written model is the fit's final loss."""
    from tokenizers import Tokenizer

    table = _table(static_folder)
    tok = Tokenizer.from_file(str(static_folder / "tokenizer.json"))
    texts = _tune_texts(80, seed=1)
    _, ids, offsets = token_bags(tok, texts, 128, VOCAB.index("[UNK]"))
    rng = np.random.default_rng(0)
    # Targets that favour some tokens: a weighted pooling the plain mean cannot give.
    favour = rng.uniform(0.1, 3.0, len(VOCAB))
    sums = np.stack([(table[ids[a:b]] * favour[ids[a:b], None]).sum(0)
                     for a, b in itertools.pairwise(offsets)])  # fmt: skip
    targets = sums @ rng.standard_normal((DIM, 12))
    for mode in TUNE_MODES:
        fit = fit_static(table, ids, offsets, targets, TuneSettings(mode=mode, epochs=30))
        assert fit.loss_end < 0.7 * fit.loss_start, (mode, fit.loss_start, fit.loss_end)
        encoder = StaticEncoder(str(static_folder), max_tokens=128)
        encoder.table, encoder.weights = fit.table, fit.weights
        pred = encoder.encode(texts) @ fit.readout
        pred /= np.linalg.norm(pred, axis=1, keepdims=True)
        unit = targets / np.linalg.norm(targets, axis=1, keepdims=True)
        assert 1 - np.mean(np.sum(pred * unit, axis=1)) == pytest.approx(fit.loss_end, abs=1e-4)
    with pytest.raises(EncoderError, match="mode must be one of"):
        fit_static(table, ids, offsets, targets, TuneSettings(mode="rows"))
    with pytest.raises(EncoderError, match="one target vector per document"):
        fit_static(table, ids, offsets, targets[:-1])


def test_tuned_folder_loads_in_model2vec_and_agrees_with_static_encoder(tuned_folder):
    model2vec = pytest.importorskip("model2vec")

    model = model2vec.StaticModel.from_pretrained(str(tuned_folder), force_download=False)
    assert model.weights is not None
    texts = [*TEXTS, *_tune_texts(20, seed=9)]
    theirs = model.encode(texts, max_length=None)
    ours = StaticEncoder(str(tuned_folder), max_tokens=100_000).encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # The weights are applied per token: the vector is the weighted mean of the rows.
    tensors = _tensors(tuned_folder)
    ids = StaticEncoder(str(tuned_folder)).tokenizer.encode(TEXTS[0], add_special_tokens=False).ids
    mean = (tensors["embeddings"][ids] * tensors["weights"][ids, None]).astype(np.float64).sum(0)
    np.testing.assert_allclose(ours[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_sample_corpus_is_seeded_and_reads_every_shard(tmp_path):
    corpus = tmp_path / "corpus"
    texts = _tune_texts(50, seed=5)
    write_jsonl(
        corpus / "a.jsonl", [{"doc_id": str(i), "text": t} for i, t in enumerate(texts[:30])]
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts[30:]}), corpus / "b.parquet")
    first = sample_corpus(str(corpus), 10, seed=1)
    assert len(first.texts) == 10 and set(first.texts) <= set(texts)
    assert first.shards == 2 and first.documents_read == len(set(texts))
    assert sample_corpus(str(corpus), 10, seed=1) == first
    assert sample_corpus(str(corpus), 10, seed=2).texts != first.texts
    everything = sample_corpus(str(corpus), 1000, seed=1)
    assert sorted(everything.texts) == sorted(set(texts))  # fewer than asked: all of them
    assert first.sample_digest.startswith("sha256:") and first.corpus_digest.startswith("sha256:")


def test_cli_tunes_on_a_corpus_and_records_it(tiny_bert, tmp_path, capsys):
    from climb_assets.cli import main

    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "shard-000.jsonl", [{"doc_id": str(i), "text": t}
                                             for i, t in enumerate(_tune_texts(40))])  # fmt: skip
    out = tmp_path / "tuned"
    argv = ["distill-static", "--out", str(out), "--model", str(tiny_bert), "--dim", "4",
            "--threads", "1", "--tune-corpus", str(corpus), "--tune-documents", "25",
            "--tune-seed", "7", "--tune-epochs", "3"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "tuning on 25 documents of 40 in 1 shard(s)" in printed and "tuned on 25" in printed
    assert "warning: 25 tuning documents; with fewer than 1,000 the weights overfit" in (
        captured.err
    )
    tuning = json.loads((out / "config.json").read_text())["climb"]["tuning"]
    assert tuning["seed"] == 7 and tuning["epochs"] == 3 and tuning["documents"] == 25
    source = tuning["source"]
    assert source["corpus"] == str(corpus) and source["documents_read"] == 40
    assert source["seed"] == 7 and source["sample_digest"] == sample_corpus(
        str(corpus), 25, 7).sample_digest  # fmt: skip
    assert StaticEncoder(str(out)).weights is not None


@pytest.mark.parametrize(
    ("make", "why"),
    [
        ("missing", "no such folder"),
        ("empty", "no .parquet or .jsonl shards under it"),
        ("no_text", "shard shard-000.jsonl has no text column 'text'"),
        ("blank", "its shards hold 0 usable documents"),
    ],
)
def test_cli_bad_tune_corpus_is_one_line_naming_the_fix(tiny_bert, tmp_path, capsys, make, why):
    from climb_assets.cli import main

    corpus = tmp_path / "corpus"
    if make != "missing":
        corpus.mkdir()
    if make == "no_text":
        write_jsonl(corpus / "shard-000.jsonl", [{"doc_id": "a", "body": "the cat"}])
    elif make == "blank":
        write_jsonl(corpus / "shard-000.jsonl", [{"doc_id": "a", "text": "  "}])
    out = tmp_path / "out"
    argv = ["distill-static", "--out", str(out), "--model", str(tiny_bert), "--dim", "4",
            "--tune-corpus", str(corpus)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"climb: error: distill-static: --tune-corpus {corpus}: {why}"), err
    assert "pass a folder of Parquet or JSONL shards" in err and "--tune-text-column" in err
    assert not out.exists()  # refused before any work


def test_tune_static_refits_a_distilled_folder_as_distilling_with_tuning_does(
    static_folder, tuned_folder, tmp_path
):
    out = tmp_path / "refit"
    record = tune_static(static_folder, out, _tune_texts(120), settings=TuneSettings(epochs=15,
                         seed=3), source={"corpus": "tiny"})  # fmt: skip
    assert (out / "model.safetensors").read_bytes() == (
        tuned_folder / "model.safetensors"
    ).read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["climb"]["tuning"] == record and record["seed"] == 3
    assert record["tuned_from"]["revision"] == folder_revision(static_folder)
    assert (out / "tokenizer.json").read_bytes() == (static_folder / "tokenizer.json").read_bytes()
    with pytest.raises(EncoderError, match="already weighted or mapped; tune a plain table"):
        tune_static(out, tmp_path / "twice", _tune_texts(10))
    with pytest.raises(EncoderError, match="already exists; pass --overwrite"):
        tune_static(static_folder, out, _tune_texts(10))
