import itertools
import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from climb_assets.lib.proxy import (
    PROXY_PRESETS,
    MixtureBatches,
    ProxyConfig,
    ProxyError,
    build_model,
    checkpoint_complete,
    count_parameters,
    evaluate_bpb,
    evaluate_choice,
    fraction_steps,
    load_checkpoint,
    proxy_preset,
    save_checkpoint,
    train_proxy,
)
from climb_assets.lib.tokens import eos_id, tokenize_documents, train_bpe_tokenizer

TINY = ProxyConfig(
    n_layer=1, n_embd=32, n_head=4, seq_len=32, batch_size=8, train_tokens=20_000, lr=1e-2
)


def _language(letters: str, seed: int, n_docs: int) -> list[str]:
    """Documents over 40 words built from `letters` only, with a fixed word-to-word pattern."""
    rng = random.Random(seed)
    words = sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(40)}
    )
    follow = {w: rng.sample(words, 3) for w in words}  # each word has 3 likely successors
    docs = []
    for _ in range(n_docs):
        word, out = rng.choice(words), []
        for _ in range(rng.randint(10, 40)):
            out.append(word)
            word = rng.choice(follow[word]) if rng.random() < 0.8 else rng.choice(words)
        docs.append(" ".join(out) + ".")
    return docs


@pytest.fixture(scope="module")
def corpus():
    lang_a = _language("abcdefgh", seed=1, n_docs=360)
    lang_b = _language("pqrstuvw", seed=2, n_docs=360)
    tok = train_bpe_tokenizer(lang_a[:300] + lang_b[:300], vocab_size=400)
    eos = eos_id(tok)
    arrays = [tokenize_documents(tok, docs[:300], eos)[0] for docs in (lang_a, lang_b)]
    return {
        "tok": tok,
        "arrays": arrays,
        "heldout_a": lang_a[300:],
        "heldout_b": lang_b[300:],
        "vocab": tok.get_vocab_size(),
    }


@pytest.fixture(scope="module")
def trained(corpus):
    """One proxy trained on language A only, one on language B only."""
    return {
        name: train_proxy(TINY, corpus["arrays"], w, corpus["vocab"], threads=1)
        for name, w in (("a", [1.0, 0.0]), ("b", [0.0, 1.0]))
    }


# --- configuration -------------------------------------------------------------------------


def test_config_budget_schedule_and_digest():
    cfg = ProxyConfig()
    assert cfg.tokens_per_step == 16 * 128
    assert cfg.steps == math.ceil(200_000 / 2048) == 98
    assert cfg.warmup_steps == 5
    assert cfg.learning_rate(0) == pytest.approx(cfg.lr / 5)
    assert cfg.learning_rate(4) == pytest.approx(cfg.lr)
    assert cfg.learning_rate(cfg.steps - 1) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    lrs = [cfg.learning_rate(s) for s in range(cfg.warmup_steps, cfg.steps)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert ProxyConfig().digest() == cfg.digest() and len(cfg.digest()) == 16
    assert replace(cfg, seed=1).digest() != cfg.digest()
    assert ProxyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 130}, "divisible by proxy.n_head"),
        ({"arch": "mamba"}, "not supported"),
        ({"seq_len": 0}, "proxy.seq_len must be a positive integer"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"lr": -1.0}, "proxy.lr"),
        ({"betas": (0.9,)}, "betas"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ProxyError, match=message):
        ProxyConfig(**kwargs)


def test_unknown_settings_and_presets_are_errors():
    with pytest.raises(ProxyError, match="unknown proxy settings"):
        ProxyConfig.from_dict({"n_layers": 3})
    with pytest.raises(ProxyError, match="unknown proxy preset"):
        proxy_preset("1B")
    assert proxy_preset("62M", train_tokens=1000).train_tokens == 1000


def test_parameter_counts_match_models_and_preset_names():
    cfg = PROXY_PRESETS["tiny"]
    model = build_model(cfg, 4096)
    assert count_parameters(cfg, 4096) == sum(p.numel() for p in model.parameters()) == 937_472
    for name, target in (("62M", 62e6), ("132M", 132e6), ("350M", 350e6)):
        assert abs(count_parameters(PROXY_PRESETS[name], 32_000) / target - 1) < 0.05
    llama = replace(TINY, arch="llama")
    assert count_parameters(llama, 400) == sum(
        p.numel() for p in build_model(llama, 400).parameters()
    )


def test_build_model_init_depends_on_seed_only():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(TINY, 300).state_dict()
    assert torch.rand(1) == before  # the caller's random state is untouched
    second = build_model(TINY, 300).state_dict()
    other = build_model(replace(TINY, seed=1), 300).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["transformer.wte.weight"], other["transformer.wte.weight"])
    assert build_model(TINY, 300).config.resid_pdrop == 0.0


# --- batches -------------------------------------------------------------------------------


def _clusters() -> list[np.ndarray]:
    # cluster k holds ids 100k .. 100k + size - 1, so a window tells where it came from
    return [
        np.arange(100 * k, 100 * k + size, dtype=np.uint16) for k, size in enumerate((90, 60, 20))
    ]


def test_mixtures_share_their_random_numbers():
    first = MixtureBatches(_clusters(), [0.5, 0.3, 0.2], seq_len=8, batch_size=16, seed=7)
    second = MixtureBatches(_clusters(), [0.2, 0.3, 0.5], seq_len=8, batch_size=16, seed=7)
    reseeded = MixtureBatches(_clusters(), [0.5, 0.3, 0.2], seq_len=8, batch_size=16, seed=8)
    for step in range(5):
        np.testing.assert_array_equal(first.uniforms(step), second.uniforms(step))
        assert not np.array_equal(first.uniforms(step), reseeded.uniforms(step))
        np.testing.assert_array_equal(first.batch(step), first.batch(step))
        same = first.clusters(step) == second.clusters(step)
        assert same.any()
        # same cluster and same u2: the very same window
        np.testing.assert_array_equal(first.batch(step)[same], second.batch(step)[same])


def test_windows_are_contiguous_rings_and_short_clusters_repeat():
    batches = MixtureBatches(_clusters(), [0.0, 0.0, 1.0], seq_len=49, batch_size=4, seed=0)
    for row in batches.batch(0):
        assert row.shape == (50,) and row.dtype == np.int64
        assert set(row.tolist()) == set(range(200, 220))  # 20 tokens tiled into 50
        assert np.all(np.diff(row) % 20 == 1)


def test_zero_weight_clusters_are_never_drawn_and_shares_follow_weights():
    weights = [0.6, 0.0, 0.4]
    batches = MixtureBatches(_clusters(), weights, seq_len=8, batch_size=16, seed=0)
    for step in range(300):
        assert not np.any((batches.batch(step) >= 100) & (batches.batch(step) < 200))
    drawn = batches.tokens_drawn(300)
    assert drawn.sum() == 300 * 16 * 8 and drawn[1] == 0
    np.testing.assert_allclose(drawn / drawn.sum(), weights, atol=0.03)
    epochs = batches.epochs_per_cluster(300)
    assert epochs[1] == 0.0 and epochs[0] == pytest.approx(drawn[0] / 90)
    # trailing zero weights are never drawn either (rounding is absorbed by the last positive one)
    tail = MixtureBatches(_clusters(), [0.3, 0.7, 0.0], seq_len=8, batch_size=64, seed=0)
    assert all(2 not in tail.clusters(s) for s in range(100))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5, 0.5], "give one weight per super-cluster"),
        ([0.5, 0.4, 0.4], "must sum to 1"),
        ([1.2, -0.2, 0.0], "non-negative"),
    ],
)
def test_bad_mixtures_are_clear_errors(weights, message):
    with pytest.raises(ProxyError, match=message):
        MixtureBatches(_clusters(), weights, seq_len=8, batch_size=4)


def test_empty_cluster_needs_zero_weight():
    arrays = [np.arange(50, dtype=np.uint16), np.zeros(0, dtype=np.uint16)]
    with pytest.raises(ProxyError, match="give it weight 0"):
        MixtureBatches(arrays, [0.5, 0.5], seq_len=8, batch_size=4)
    assert MixtureBatches(arrays, [1.0, 0.0], seq_len=8, batch_size=4).epochs_per_cluster(3)[1] == 0


# --- training ------------------------------------------------------------------------------


def test_training_is_deterministic_and_learns(corpus, trained):
    again = train_proxy(TINY, corpus["arrays"], [1.0, 0.0], corpus["vocab"], threads=1)
    first = trained["a"]
    state, state_again = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert first.loss_curve == again.loss_curve
    assert first.steps == TINY.steps and first.tokens == TINY.steps * TINY.tokens_per_step
    assert first.tokens_per_second > 0 and len(first.loss_curve) == TINY.steps
    assert first.final_loss < first.loss_curve[0] - 1.5
    assert first.epochs_per_cluster[1] == 0.0
    assert first.epochs_per_cluster[0] == pytest.approx(first.tokens / corpus["arrays"][0].size)
    assert not first.model.training


def test_a_proxy_is_best_on_its_own_language(corpus, trained):
    args = (corpus["tok"],)
    a_on_a = evaluate_bpb(trained["a"].model, *args, corpus["heldout_a"], seq_len=32)
    b_on_a = evaluate_bpb(trained["b"].model, *args, corpus["heldout_a"], seq_len=32)
    a_on_b = evaluate_bpb(trained["a"].model, *args, corpus["heldout_b"], seq_len=32)
    b_on_b = evaluate_bpb(trained["b"].model, *args, corpus["heldout_b"], seq_len=32)
    assert a_on_a["bpb"] < b_on_a["bpb"] - 0.5
    assert b_on_b["bpb"] < a_on_b["bpb"] - 0.5
    assert a_on_a["bytes"] == sum(len(t.encode()) for t in corpus["heldout_a"])
    tokens = sum(len(corpus["tok"].encode(t).ids) for t in corpus["heldout_a"])
    assert a_on_a["tokens"] == tokens
    assert a_on_a["bpb"] == pytest.approx(
        a_on_a["nats_per_token"] * tokens / math.log(2) / a_on_a["bytes"]
    )


def test_bpb_window_batching_does_not_change_the_result(corpus, trained):
    model, tok, texts = trained["a"].model, corpus["tok"], corpus["heldout_a"][:10]
    one = evaluate_bpb(model, tok, texts, seq_len=32, batch_size=1)
    many = evaluate_bpb(model, tok, texts, seq_len=32, batch_size=64)
    assert one["bpb"] == pytest.approx(many["bpb"], rel=1e-5)
    assert evaluate_bpb(model, tok, texts, seq_len=16)["tokens"] == one["tokens"]


def test_choice_accuracy_above_chance_for_in_distribution_answers(corpus, trained):
    rng = random.Random(0)
    items = []
    for i, doc in enumerate(corpus["heldout_a"][:30]):
        words = doc.rstrip(".").split()
        others = rng.sample(corpus["heldout_b"], 3)
        choices = [" " + " ".join(d.split()[:2]) for d in others]
        answer = i % 4
        choices.insert(answer, " " + " ".join(words[4:6]))
        items.append({"context": " ".join(words[:4]), "choices": choices, "answer": answer})
    result = evaluate_choice(trained["a"].model, corpus["tok"], items, seq_len=32)
    assert result["items"] == 30
    assert result["accuracy"] > 0.8 and result["accuracy_norm"] > 0.8
    flipped = evaluate_choice(trained["b"].model, corpus["tok"], items, seq_len=32)
    assert flipped["accuracy"] < 0.25


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"choices": [" a", " b"], "answer": 0}, "missing 'context'"),
        ({"context": "x", "choices": [" a", " b"], "answer": 2}, "out of range for 2 choices"),
        ({"context": "x", "choices": [" a"], "answer": 0}, "at least 2 non-empty"),
        ({"context": "x", "choices": [" a", ""], "answer": 0}, "at least 2 non-empty"),
        ({"context": "x", "choices": [" a", " b"], "answer": "0"}, "not an integer"),
    ],
)
def test_choice_items_are_validated(corpus, trained, item, message):
    with pytest.raises(ProxyError, match=message):
        evaluate_choice(trained["a"].model, corpus["tok"], [item], seq_len=32)


def test_evaluation_and_training_inputs_are_checked(corpus, trained):
    model, tok = trained["a"].model, corpus["tok"]
    with pytest.raises(ProxyError, match="use the proxy's seq_len"):
        evaluate_bpb(model, tok, ["abc"], seq_len=64)
    with pytest.raises(ProxyError, match="no target text"):
        evaluate_bpb(model, tok, ["", ""], seq_len=32)
    with pytest.raises(ProxyError, match="same tokenizer"):
        train_proxy(TINY, corpus["arrays"], [0.5, 0.5], vocab_size=100)


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, trained):
    result = trained["a"]
    extra = {"weights": np.array([1.0, 0.0]), "tokenizer": "abc", "stats": result.stats()}
    folder = save_checkpoint(result.model, TINY, tmp_path / "proxies" / "p0", extra)
    assert checkpoint_complete(folder)
    assert {p.name for p in folder.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "proxy.json",
        "DONE",
    }
    model, cfg, loaded_extra = load_checkpoint(folder)
    assert cfg == TINY and cfg.digest() == TINY.digest()
    assert loaded_extra["weights"] == [1.0, 0.0] and loaded_extra["tokenizer"] == "abc"
    assert loaded_extra["stats"]["steps"] == result.steps
    inputs = torch.randint(0, 400, (3, 32))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=inputs).logits, result.model(input_ids=inputs).logits)
    # overwriting replaces the folder and leaves no temporary siblings behind
    save_checkpoint(result.model, TINY, folder, {"round": 2})
    assert load_checkpoint(folder)[2] == {"round": 2}
    assert [p.name for p in folder.parent.iterdir()] == ["p0"]


def test_half_written_checkpoint_is_not_complete(tmp_path, trained):
    folder = save_checkpoint(trained["a"].model, TINY, tmp_path / "p1")
    (folder / "DONE").unlink()
    assert not checkpoint_complete(folder)
    assert not checkpoint_complete(tmp_path / "missing")
    with pytest.raises(ProxyError, match="retrain the proxy or delete the folder"):
        load_checkpoint(folder)


def test_checkpoint_extra_must_be_json(tmp_path, trained):
    with pytest.raises(ProxyError, match="not JSON-serialisable"):
        save_checkpoint(trained["a"].model, TINY, tmp_path / "p2", {"bad": object()})
    assert not (tmp_path / "p2").exists() and list(tmp_path.iterdir()) == []


def test_llama_proxy_trains_and_round_trips(tmp_path, corpus):
    cfg = replace(TINY, arch="llama", train_tokens=3_000)
    result = train_proxy(cfg, corpus["arrays"], [0.5, 0.5], corpus["vocab"], threads=1)
    assert math.isfinite(result.final_loss)
    model, loaded_cfg, _ = load_checkpoint(save_checkpoint(result.model, cfg, tmp_path / "llama"))
    assert loaded_cfg.arch == "llama"
    inputs = torch.randint(0, 400, (2, 16))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=inputs).logits, result.model(input_ids=inputs).logits)


def test_progress_log_is_called(corpus):
    lines: list[str] = []
    cfg = replace(TINY, train_tokens=2_560)
    train_proxy(cfg, corpus["arrays"], [0.5, 0.5], corpus["vocab"], log=lines.append, threads=1)
    assert len(lines) == 10 and lines[-1].startswith("step 10/10 loss")


def test_learning_curve_evaluations_leave_training_unchanged(corpus, trained):
    steps = fraction_steps(TINY, [0.25, 0.5])
    assert steps == [round(0.25 * TINY.steps), round(0.5 * TINY.steps)]
    seen: list[tuple[int, float]] = []

    def score(step: int, model) -> None:
        bpb = evaluate_bpb(model, corpus["tok"], corpus["heldout_a"], seq_len=32)["bpb"]
        seen.append((step, bpb))

    result = train_proxy(
        TINY, corpus["arrays"], [1.0, 0.0], corpus["vocab"], threads=1, on_checkpoint=score,
        checkpoint_steps=steps,
    )  # fmt: skip
    assert [s for s, _ in seen] == steps
    final = evaluate_bpb(result.model, corpus["tok"], corpus["heldout_a"], seq_len=32)["bpb"]
    assert seen[0][1] > seen[1][1] > final  # the curve falls as training goes on
    # Scoring mid-run does not change the weights a plain run reaches.
    plain, scored = trained["a"].model.state_dict(), result.model.state_dict()
    assert all(torch.equal(plain[k], scored[k]) for k in plain)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_bf16_autocast(corpus):
    result = train_proxy(TINY, corpus["arrays"], [1.0, 0.0], corpus["vocab"], device="cuda")
    assert next(result.model.parameters()).dtype == torch.float32
    assert result.final_loss < result.loss_curve[0] - 1.0
    bpb = evaluate_bpb(result.model, corpus["tok"], corpus["heldout_a"], seq_len=32, device="cuda")
    assert math.isfinite(bpb["bpb"])
