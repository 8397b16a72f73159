"""The testbed's tokenizer, built with `tokenizers`: a byte-level BPE with no merges.

It has the same pipeline as a Qwen2 tokenizer (NFC normaliser, Qwen2's
pre-tokenisation regex, byte-level mapping and decoder), so that
`AutoTokenizer.from_pretrained` on the saved model folder, which picks
`Qwen2Tokenizer` from the model type, gives exactly the same token ids. With no
merges every byte is one token: digits and operators are single tokens, which is
what a tiny arithmetic model needs. `<think>` and `</think>` are added as single
(non-special) tokens; `<|endoftext|>` is EOS and `<|pad|>` the padding token.
"""

from __future__ import annotations

PAD, EOS = "<|pad|>", "<|endoftext|>"
EXTRA_TOKENS = ["<think>", "</think>"]
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2's map)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def build_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, PAD: 1}
    for ch in _byte_alphabet():
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (EOS, PAD)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=EOS,
        bos_token=None,
        padding_side="left",
        model_max_length=512,
    )
