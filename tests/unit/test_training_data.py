"""Training data: both JSONL formats, completion-only labels, clear errors naming the line."""

from __future__ import annotations

import json

import pytest

from training.data import IGNORE, CompletionCollator, encode, load_records, mix, read_jsonl, split
from training.errors import DatasetError
from training.tokenizer import build_tokenizer

pytestmark = pytest.mark.unit

# A generic chat template that renders assistant turns (the demo's does not).
GENERIC_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_prompt_completion_labels_only_the_completion(tokenizer, tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"prompt": "word: cat\nanswer:", "completion": " tac\n"}, ""])
    (record,) = load_records(data, tokenizer)
    item = encode(record, tokenizer, max_length=64)
    learned = [t for t in item["labels"] if t != IGNORE]
    assert tokenizer.decode(learned[:-1]) == " tac\n" and learned[-1] == tokenizer.eos_token_id
    assert item["input_ids"][0] == tokenizer.bos_token_id
    assert len(item["input_ids"]) == len(item["labels"])


def test_chat_with_a_template_that_renders_answers(tokenizer, tmp_path):
    tok = build_tokenizer()
    tok.chat_template = GENERIC_TEMPLATE
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "cat"},
                {"role": "assistant", "content": "tac"}]
    (record,) = load_records(_write(tmp_path / "c.jsonl", [{"messages": messages}]), tok)
    assert record.templated and record.prompt.endswith("<|assistant|>") and record.completion == "tac<eos>"
    item = encode(record, tok, max_length=128)
    assert item["input_ids"].count(tok.bos_token_id) == 1  # the template's <bos> is not doubled
    learned = [t for t in item["labels"] if t != IGNORE]
    assert tok.decode(learned) == "tac<eos>"  # eos rendered by the template, not appended twice


def test_chat_with_the_demo_template_falls_back_to_the_answer_text(tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": " tac\n"}]}]
    (record,) = load_records(_write(tmp_path / "c.jsonl", rows), tokenizer)
    assert record.prompt == "<bos>word: cat\nanswer:" and record.completion == " tac\n"


@pytest.mark.parametrize(("line", "needle"), [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: a JSON list"),
    ({"text": "x"}, "line 2: unknown keys ['text']"),
    ({"prompt": "p", "completion": ""}, "line 2: prompt must be a string and completion a non-empty string"),
    ({"messages": [{"role": "user", "content": "x"}]}, "line 2: messages must be a list of at least two"),
    ({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
     "line 2: the last message must be the assistant's"),
])
def test_malformed_lines_are_named(tokenizer, tmp_path, line, needle):
    data = _write(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c"}, line])
    with pytest.raises(DatasetError) as err:
        load_records(data, tokenizer)
    assert needle in err.value.message and "bad.jsonl" in err.value.message


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="holds no examples"):
        read_jsonl(_write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DatasetError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_truncation_keeps_ids_and_labels_aligned(tokenizer):
    from training.data import Record

    item = encode(Record("word: " + "x" * 50 + "\nanswer:", " y\n"), tokenizer, max_length=10)
    assert len(item["input_ids"]) == len(item["labels"]) == 10 and set(item["labels"]) == {IGNORE}


def test_split_and_mix_shares():
    train, val = split(list(range(100)), 0.1, seed=0)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert split(list(range(100)), 0.1, seed=0) == (train, val)  # seeded: resume sees the same split
    mixture, n_general = mix(list(range(80)), [f"g{i}" for i in range(100)], 0.2, seed=0)
    assert n_general == 20 and len(mixture) == 100
    with pytest.raises(DatasetError):
        mix([1], [2], 1.0, seed=0)


def test_collator_pads_ids_labels_and_mask():
    batch = CompletionCollator(pad_id=2)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                          {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 2, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [5, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
