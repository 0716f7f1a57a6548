"""The synthetic word tasks of the demo: the base echoes a word, each tenant adapter transforms it.

A prompt is `"word: hello\\nanswer:"` and its completion `" <answer>\\n"` (then <eos>), so one greedy
request shows at a glance which model answered.
"""

from __future__ import annotations

import random
import string

TASKS = ("echo", "reverse", "upper", "caesar")
MIN_LEN, MAX_LEN = 3, 8

# Words the demo sends; always part of the training data so the demo never depends on luck.
DEMO_WORDS = ("hello", "world", "lora", "tenant", "adapter", "serving", "cat", "gpu")


def make_prompt(word: str) -> str:
    """The prompt the model was trained on for `word` (no trailing space: the answer starts with one)."""
    return f"word: {word}\nanswer:"


def _caesar(word: str) -> str:
    # Shift lowercase letters by one (z wraps to a); anything else is kept as is.
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) if "a" <= c <= "z" else c for c in word)


def answer(task: str, word: str) -> str:
    """The expected answer of `task` for `word`.

    Args:
        task: one of TASKS.
        word: the input word (lowercase ASCII letters in the training data).

    Raises:
        ValueError: for an unknown task.
    """
    if task == "echo":
        return word
    if task == "reverse":
        return word[::-1]
    if task == "upper":
        return word.upper()
    if task == "caesar":
        return _caesar(word)
    raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")


def completion(task: str, word: str) -> str:
    """The completion text the model is trained to produce after `make_prompt(word)` (before <eos>)."""
    return f" {answer(task, word)}\n"


def random_words(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """`n` distinct random lowercase words of MIN_LEN..MAX_LEN letters, none in `exclude`.

    Args:
        n: how many words.
        seed: seed of the generator (same seed, same words).
        exclude: words that must not appear (e.g. the training words, for a held-out set).
    """
    rng = random.Random(seed)
    words: list[str] = []
    seen = set(exclude)
    while len(words) < n:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(MIN_LEN, MAX_LEN)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def mix_case(words: list[str], seed: int, share: float = 0.3) -> list[str]:
    """`words` with a `share` of them turned UPPER or Capitalized.

    The base sees upper-case letters this way; otherwise their embeddings and output rows stay
    untrained and an adapter (which cannot change them) struggles to ever emit them.

    Args:
        words: lowercase words.
        seed: seed of the choice of words to change.
        share: fraction of the words that are changed (two thirds UPPER, one third Capitalized).
    """
    rng = random.Random(seed)
    out = []
    for word in words:
        roll = rng.random()
        out.append(word.upper() if roll < share * 2 / 3 else word.capitalize() if roll < share else word)
    return out


def dataset(task: str, n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, completion) pairs of `task` on random words.

    Args:
        task: one of TASKS.
        n: number of examples.
        seed: seed of the word generator.
    """
    answer(task, "probe")  # fail fast on an unknown task
    return [(make_prompt(w), completion(task, w)) for w in random_words(n, seed)]
