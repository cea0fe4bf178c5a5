import json

import pytest

from climb_assets.lib.targets import TargetError, load_target, objective, target_hashes


def test_text_targets_from_txt_and_jsonl(tmp_path):
    (tmp_path / "t.txt").write_text("first doc\n\nsecond doc\n\n\n")
    t = load_target("t", "text", str(tmp_path / "t.txt"), weight=2.0)
    assert t.texts == ["first doc", "second doc"] and t.size == 2
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_target("j", "text", str(tmp_path / "t.jsonl"), max_documents=1).texts == ["a"]
    assert len(target_hashes(t)) == 2


def test_choice_targets_are_validated(tmp_path):
    good = {"context": "2+2=", "choices": [" 4", " 5"], "answer": 0}
    (tmp_path / "c.jsonl").write_text(json.dumps(good) + "\n")
    assert load_target("c", "choice", str(tmp_path / "c.jsonl")).items[0]["answer"] == 0
    (tmp_path / "bad.jsonl").write_text(json.dumps({**good, "answer": 3}) + "\n")
    with pytest.raises(TargetError, match="'answer' must be an index"):
        load_target("c", "choice", str(tmp_path / "bad.jsonl"))
    (tmp_path / "nokey.jsonl").write_text(json.dumps({"context": "x"}) + "\n")
    with pytest.raises(TargetError, match="missing key 'choices'"):
        load_target("c", "choice", str(tmp_path / "nokey.jsonl"))


def test_missing_and_empty_targets(tmp_path):
    with pytest.raises(TargetError, match="does not exist; fix targets"):
        load_target("t", "text", str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(TargetError, match="holds no text"):
        load_target("t", "text", str(tmp_path / "empty.txt"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(TargetError, match="not UTF-8"):
        load_target("t", "text", str(tmp_path / "bad.txt"))


def test_objective_sign_convention(tmp_path):
    (tmp_path / "t.txt").write_text("x")
    good = {"context": "a", "choices": ["b", "c"], "answer": 0}
    (tmp_path / "c.jsonl").write_text(json.dumps(good) + "\n")
    text = load_target("text", "text", str(tmp_path / "t.txt"), weight=1.0)
    choice = load_target("mc", "choice", str(tmp_path / "c.jsonl"), weight=0.5)
    scores = {"text": {"bpb": 2.0}, "mc": {"accuracy": 0.6}}
    assert objective(scores, [text, choice]) == pytest.approx(-2.0 + 0.3)
    better = {"text": {"bpb": 1.5}, "mc": {"accuracy": 0.6}}
    assert objective(better, [text, choice]) > objective(scores, [text, choice])
