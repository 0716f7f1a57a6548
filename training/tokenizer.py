"""A byte-level tokenizer where every character is one token.

One token per byte keeps the demo tasks (reverse, upper, shift) trivially aligned for a tiny model,
and the ByteLevel decoder makes decoding an exact inverse of encoding (spaces and newlines included).
Saved as a `PreTrainedTokenizerFast` so vLLM and transformers load it with `AutoTokenizer`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
SPECIALS = (BOS, EOS, PAD)  # ids 0, 1, 2; byte b has id len(SPECIALS) + b

# Chat requests answer like a completion prompt for the last user message (see tasks.make_prompt):
# the template must produce the exact text the model was trained on, <bos> included, because vLLM
# does not add special tokens to an already templated chat prompt.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(word='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{%- set ns.word = m['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}word: {{ ns.word | trim }}\nanswer:"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def build_backend() -> Tokenizer:
    """The raw `tokenizers` object: 3 specials + 256 byte symbols, no merges, <bos> prepended."""
    symbols = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({symbols[b]: len(SPECIALS) + b for b in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    # No regex split and no prefix space: the text is exactly the byte sequence, nothing is added.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tok


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The transformers tokenizer of the demo model (bos/eos/pad set, chat template included)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,  # the default cleanup would eat spaces before punctuation
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def save_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer and save it into `out_dir`.

    Args:
        out_dir: directory that receives tokenizer.json and tokenizer_config.json.

    Returns:
        The tokenizer that was saved.
    """
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
