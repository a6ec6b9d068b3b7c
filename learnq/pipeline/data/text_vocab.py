"""The fixed character vocabulary of learnq's text data sets (``shakespeare-char``, ``bard-or-milton``).

No paper. 98 tokens, the same on every corpus, so a model file's vocabulary never depends on the data it was trained
on and ``learnq eval FILE`` rebuilds it from its description in the metadata (``VOCABULARY_RECORD``):

* id 0: ``<pad>`` (fills short lines of the classification set; never a language-model target);
* id 1: ``<unk>``: any character left outside the printable ASCII range after normalisation;
* ids 2..97: newline, then the 95 printable ASCII characters ``" "`` (32) to ``"~"`` (126) in code order.

Normalisation before lookup (``normalise_text``): CRLF and lone CR become LF, tabs become a space, a byte-order mark
and the DOS end-of-file character (U+001A) are removed, and each other character is decomposed (Unicode NFKD) with
its combining marks dropped, so ``é`` reads ``e``; what is still not in the table (``æ``, ``£``...) is ``<unk>``.
"""

from __future__ import annotations

import unicodedata

import numpy as np

PAD_ID = 0
UNK_ID = 1
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # ids 2..97
VOCAB_SIZE = 2 + len(CHARS)  # 98
VOCABULARY_VERSION = 1

VOCABULARY_RECORD = {
    "version": VOCABULARY_VERSION,
    "size": VOCAB_SIZE,
    "pad": PAD_ID,
    "unknown": UNK_ID,
    "first_char_id": 2,
    "chars": CHARS,
    "normalisation": "CRLF/CR->LF, tab->space, BOM and U+001A removed, NFKD without combining marks, else <unk>",
}

_LOOKUP = np.full(128, UNK_ID, dtype=np.int64)
for _i, _ch in enumerate(CHARS):
    _LOOKUP[ord(_ch)] = 2 + _i


def normalise_text(text: str) -> str:
    """``text`` with line ends, tabs, BOM/EOF marks and accents normalised as the module docstring says."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = text.replace("\ufeff", "").replace("\x1a", "")
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def encode(text: str) -> np.ndarray:
    """Token ids (int64) of an already normalised ``text``: one per character, ``UNK_ID`` outside the table."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.full(codes.shape, UNK_ID, dtype=np.int64)
    ascii_mask = codes < 128
    ids[ascii_mask] = _LOOKUP[codes[ascii_mask]]
    return ids


def decode(ids: np.ndarray | list[int]) -> str:
    """The characters of token ids (``<pad>`` dropped, ``<unk>`` shown as ``?``); for samples and tests."""
    out = []
    for i in np.asarray(ids, dtype=np.int64).ravel().tolist():
        if i == PAD_ID:
            continue
        out.append("?" if i == UNK_ID or not 2 <= i < VOCAB_SIZE else CHARS[i - 2])
    return "".join(out)


__all__ = ["CHARS", "PAD_ID", "UNK_ID", "VOCABULARY_RECORD", "VOCAB_SIZE", "decode", "encode", "normalise_text"]
