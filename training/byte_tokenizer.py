"""A 260-token byte-level tokenizer with the ChatML specials: lets smoke runs and tests train without any files.

Recipes name it `tokenizer: builtin:bytes`. It has the four special tokens the real tokenizer (`assets/tokenizer`,
built by `python -m training.tokenizer`) has: `<|endoftext|>` (eos and padding), `<|im_start|>`, `<|im_end|>`,
`<|MASK|>` (the mask token), and a ChatML chat template.
"""

from __future__ import annotations

from sdar_core.prompting import END_OF_TEXT, MASK_TOKEN

from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS


def byte_tokenizer():
    """A transformers fast tokenizer: 256 byte tokens (GPT-2 byte-level alphabet, no merges) + SPECIAL_TOKENS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, mask_token=MASK_TOKEN
    )
    out.chat_template = CHAT_TEMPLATE
    return out
