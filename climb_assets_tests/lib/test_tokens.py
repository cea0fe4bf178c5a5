import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from climb_assets.lib.tokens import (
    EOS_TOKEN,
    TokenizerError,
    eos_id,
    load_tokenizer,
    token_dtype,
    tokenize_documents,
    tokenizer_hash,
    train_bpe_tokenizer,
)


def _texts(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(80)
    ]
    extras = [
        "naïve café",
        "日本語のテキスト",
        "emoji 😀 ok",
        "tabs\tand\nnewlines",
        "  two spaces",
    ]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) + " " + rng.choice(extras)
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe_tokenizer(_texts(), vocab_size=600)


def test_bpe_is_deterministic_within_and_across_processes(tok, tmp_path):
    again = train_bpe_tokenizer(_texts(), vocab_size=600)
    assert again.to_str() == tok.to_str()
    assert tokenizer_hash(again) == tokenizer_hash(tok)
    assert len(tokenizer_hash(tok)) == 16

    (tmp_path / "texts.json").write_text(json.dumps(_texts()))
    script = textwrap.dedent(
        f"""
        import json
        from climb_assets.lib.tokens import tokenizer_hash, train_bpe_tokenizer
        texts = json.load(open({str(tmp_path / "texts.json")!r}))
        print("HASH", tokenizer_hash(train_bpe_tokenizer(texts, vocab_size=600)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert f"HASH {tokenizer_hash(tok)}" in out


def test_bpe_layout_and_exact_round_trip(tok):
    assert tok.get_vocab_size() == 600
    assert tok.token_to_id(EOS_TOKEN) == 0 == eos_id(tok)
    for text in [*_texts(20, seed=1), "unseen ∑ symbols ✓ and 🚀", " leading space", ""]:
        assert tok.decode(tok.encode(text).ids) == text
    assert train_bpe_tokenizer(["x"], vocab_size=600).get_vocab_size() >= 257


def test_different_texts_give_a_different_hash(tok):
    other = train_bpe_tokenizer(_texts(seed=5), vocab_size=600)
    assert tokenizer_hash(other) != tokenizer_hash(tok)


def test_tokenize_documents_keeps_boundaries(tok):
    texts = [*_texts(7, seed=2), "", "last one"]
    eos = eos_id(tok)
    tokens, offsets = tokenize_documents(tok, texts, eos, batch_size=3)
    assert tokens.dtype == np.uint16 and offsets.dtype == np.int64
    assert offsets.shape == (len(texts) + 1,) and offsets[0] == 0 and offsets[-1] == tokens.size
    for i, text in enumerate(texts):
        doc = tokens[offsets[i] : offsets[i + 1]]
        assert doc[-1] == eos and eos not in doc[:-1]
        assert doc[:-1].tolist() == tok.encode(text).ids
        assert tok.decode(doc[:-1].tolist()) == text
    assert int((tokens == eos).sum()) == len(texts)
    empty_tokens, empty_offsets = tokenize_documents(tok, [], eos)
    assert empty_tokens.size == 0 and empty_offsets.tolist() == [0]


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32
    assert token_dtype(128_256) == np.uint32


def test_tokenize_documents_rejects_bad_eos(tok):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenize_documents(tok, ["a"], eos=10_000)


def test_load_tokenizer_from_file_and_folder(tok, tmp_path):
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    assert tokenizer_hash(load_tokenizer(str(path))) == tokenizer_hash(tok)
    assert tokenizer_hash(load_tokenizer(str(path.parent))) == tokenizer_hash(tok)


def test_load_tokenizer_from_hf_folder_without_tokenizer_json(tok, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    tok.model.save(str(folder))  # vocab.json + merges.txt, as a GPT-2 style checkpoint ships
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": EOS_TOKEN})
    )
    loaded = load_tokenizer(str(folder))
    assert isinstance(loaded, Tokenizer)
    text = "abc def naïve"
    assert loaded.encode(text, add_special_tokens=False).ids == tok.encode(text).ids
    assert eos_id(loaded) == 0


def test_missing_tokenizer_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="does not exist; set tokenizer.path"):
        load_tokenizer(str(missing))
    with pytest.raises(TokenizerError, match="use kind: bpe"):
        load_tokenizer(str(tmp_path / "no-folder") + "/")


def test_folder_without_a_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="could not load tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(str(path))


def test_eos_id_finds_other_conventions_or_raises():
    llama_like = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, "<unk>"))
    assert eos_id(llama_like) == 2
    none = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, "<unk>"))
    with pytest.raises(TokenizerError, match="add <\\|endoftext\\|> as a special token"):
        eos_id(none)


def test_training_arguments_are_checked():
    with pytest.raises(TokenizerError, match="at least 257"):
        train_bpe_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(TokenizerError, match="min_frequency"):
        train_bpe_tokenizer(["abc"], min_frequency=0)
