from __future__ import annotations

import json

import pytest

from qbench_tui.engine.prompts import PromptError, Sized, load_prompts, make_prompt_source, synthetic_prompt
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.request import build_request


def test_fixed_prompt_repeats():
    src = make_prompt_source("hello")
    assert [src(i) for i in range(3)] == ["hello"] * 3


def test_unique_prefix_comes_first_and_differs():
    """In a system message of its own, before anything a chat template would put first (its default system
    prompt, shared by every request); on the completions endpoint the tag is the text's start."""
    src = make_prompt_source("same question", unique_prefix=True)
    a, b = src(0), src(1)
    assert [m["role"] for m in a] == ["system", "user"] and a[1]["content"] == "same question"
    assert a[0]["content"][:20] != b[0]["content"][:20]  # differs at the START, where prefix caching hashes
    assert src(0) == a  # deterministic
    spec = RequestSpec(url="http://x", model="m", endpoint="completions")
    text = build_request(spec, a)[1]["prompt"]
    assert text.startswith(a[0]["content"]) and text.endswith("same question")


def test_synthetic_length_is_about_n_words():
    assert len(synthetic_prompt(300).split()) == 300
    src = make_prompt_source("", prompt_len=50)
    assert len(src(0).split()) == 50


def test_files(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["one", "two"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n"
                                      + json.dumps({"messages": [{"role": "user", "content": "b"}]}) + "\n")
    assert load_prompts(str(tmp_path / "p.jsonl")) == ["a", [{"role": "user", "content": "b"}]]
    share = [{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]},
             {"conversations": [{"from": "gpt", "value": "only answer"}]}]
    (tmp_path / "s.json").write_text(json.dumps(share))
    assert load_prompts(str(tmp_path / "s.json")) == ["q1"]
    src = make_prompt_source("", prompts_file=str(tmp_path / "p.txt"))
    assert [src(i) for i in range(3)] == ["one", "two", "one"]


def test_messages_get_unique_prefix_too(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "b"}]}) + "\n")
    src = make_prompt_source("", prompts_file=str(tmp_path / "p.jsonl"), unique_prefix=True)
    m = src(0)
    assert m[0]["role"] == "system" and len(m[0]["content"]) > 10 and m[1] == {"role": "user", "content": "b"}


def test_jsonl_output_tokens_per_line(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "a", "output_tokens": 5}, {"messages": [{"role": "user", "content": "b"}], "max_tokens": 7},
        {"prompt": "c"}, {"prompt": "d", "output_tokens": None}, {"prompt": "e", "output_tokens": -1}]))
    assert load_prompts(str(f)) == [Sized("a", 5), Sized([{"role": "user", "content": "b"}], 7), "c", "d", "e"]
    src = make_prompt_source("", prompts_file=str(f), unique_prefix=True)
    first = src(0)
    assert isinstance(first, Sized) and first.max_tokens == 5 and first.prompt[1]["content"] == "a"
    spec = RequestSpec(url="http://x", model="m", max_tokens=200)
    assert build_request(spec, Sized("q", 11))[1]["max_tokens"] == 11
    assert build_request(spec, src(2))[1]["max_tokens"] == 200
    assert build_request(spec, src(1))[1]["messages"][1]["content"] == "b"


@pytest.mark.parametrize("name, body, msg", [
    ("x.jsonl", '{"prompt": "a", "output_tokens": 0}\n', "must be a positive integer"),
    ("x.jsonl", '{"prompt": "a", "max_tokens": "12"}\n', "must be a positive integer"),
    ("x.jsonl", "{bad\n", "not valid JSON"),
    ("x.jsonl", '{"text": 1}\n', "expected an object"),
    ("x.txt", "\n\n", "no prompts"),
    ("x.json", '{"a": 1}', "expected a JSON list"),
])
def test_bad_files(tmp_path, name, body, msg):
    (tmp_path / name).write_text(body)
    with pytest.raises(PromptError, match=msg):
        load_prompts(str(tmp_path / name))
    with pytest.raises(PromptError, match="cannot read"):
        load_prompts(str(tmp_path / "missing.txt"))
