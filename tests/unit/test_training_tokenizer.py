"""The demo tokenizer: exact round trips, one token per character, special tokens, chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from training.tasks import DEMO_WORDS, answer, completion, dataset, make_prompt, mix_case, random_words
from training.tokenizer import BOS, EOS, PAD, save_tokenizer

pytestmark = pytest.mark.unit

SAMPLES = [
    "word: hello\nanswer: olleh",
    "word: hello\nanswer:",
    " leading and  double  spaces ",
    "tabs\tand\nnew\r\nlines\n\n",
    "punctuation: a , b . c ! can't (x) [y] {z}",
    "unicode: héllo wörld — 漢字 😀",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tokenizer as vLLM sees it: saved, then loaded back with AutoTokenizer."""
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_one_token_per_byte_after_bos(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == 1 + len(text.encode("utf-8"))


def test_each_ascii_character_is_its_own_token(tokenizer):
    word = "hello"
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == list(word)
    # Reversing the tokens reverses the text: what the reverse adapter relies on.
    assert tokenizer.decode(ids[::-1]) == "olleh"


def test_concatenation_tokenizes_like_the_parts(tokenizer):
    prompt, done = make_prompt("tenant"), completion("reverse", "tenant")
    whole = tokenizer(prompt + done)["input_ids"]
    assert whole == tokenizer(prompt)["input_ids"] + tokenizer(done, add_special_tokens=False)["input_ids"]


def test_special_tokens(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    assert len(tokenizer) == 3 + 256
    ids = tokenizer("ab")["input_ids"] + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template_renders_the_completion_prompt(tokenizer):
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": " hello "}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5 returns a BatchEncoding
    assert ids == tokenizer(make_prompt("hello"))["input_ids"]


def test_tasks():
    assert [answer(t, "hello") for t in ("echo", "reverse", "upper", "caesar")] == ["hello", "olleh", "HELLO", "ifmmp"]
    assert answer("caesar", "xyz") == "yza"
    assert make_prompt("lora") == "word: lora\nanswer:" and completion("upper", "lora") == " LORA\n"
    with pytest.raises(ValueError):
        answer("nope", "x")
    words = random_words(200, seed=3)
    assert words == random_words(200, seed=3) and len(set(words)) == 200
    assert all(3 <= len(w) <= 8 and w.isalpha() and w.islower() for w in words)
    assert not set(random_words(50, seed=4, exclude=set(words))) & set(words)
    assert dataset("reverse", 2, seed=3) == [(make_prompt(w), completion("reverse", w)) for w in words[:2]]
    assert all(m.lower() == w for m, w in zip(mix_case(words, 0), words))
    assert all(3 <= len(w) <= 8 and w.isalpha() and w.islower() for w in DEMO_WORDS)
