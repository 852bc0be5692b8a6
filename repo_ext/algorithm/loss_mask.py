"""Packed loss masks: which tokens of a stored response the loss uses, at one bit per token.

A multi-turn (tool-calling) response interleaves tokens the policy generated (loss mask 1) with
tool output it did not (mask 0, verl's ``response_mask``). The replay store keeps a response's
mask only when it has a 0, packed with :func:`pack_loss_mask`: token ``i`` is bit ``i % 8``
(least significant first) of byte ``i // 8``, the unused high bits of the last byte are 0, so a
mask of L tokens takes ``ceil(L / 8)`` bytes (:func:`mask_nbytes`).

Example::

    >>> pack_loss_mask([1, 1, 0, 0, 0, 1, 1, 1, 1, 0]).tolist()  # tokens 0,1,5,6,7 | 8
    [227, 1]
    >>> pack_loss_mask([1, 1, 1]) is None  # every token a loss token: nothing to store
    True
    >>> unpack_loss_mask(np.array([227, 1], np.uint8), 10).astype(int).tolist()
    [1, 1, 0, 0, 0, 1, 1, 1, 1, 0]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_nbytes(length: int) -> int:
    """Bytes of the packed loss mask of a ``length``-token response: one bit per token, whole bytes."""
    return (length + 7) // 8


def pack_loss_mask(mask: Any) -> np.ndarray | None:
    """A (L,) loss mask (bool, or integers 0/1) as stored: None when every token is a loss token,
    else the (ceil(L/8),) uint8 packing described in the module docstring."""
    mask = np.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"loss_mask must be 1-D (one flag per response token), got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "iu" or (mask.size and (int(mask.min()) < 0 or int(mask.max()) > 1)):
            raise ValueError(f"loss_mask must hold only 0 and 1 (or bools), got dtype {mask.dtype}")
        mask = mask.astype(np.bool_)
    if mask.all():
        return None
    return np.packbits(mask, bitorder="little")


def unpack_loss_mask(bits: np.ndarray | None, length: int) -> np.ndarray:
    """(length,) bool loss mask from :func:`pack_loss_mask`'s output (None: all True)."""
    if bits is None:
        return np.ones(length, dtype=np.bool_)
    return np.unpackbits(bits, count=length, bitorder="little").astype(np.bool_)


def is_canonical_mask(bits: np.ndarray, length: int) -> bool:
    """Whether ``bits`` is what :func:`pack_loss_mask` writes for some mask of ``length`` tokens
    that mixes loss and non-loss tokens: no bit set past the last token, at least one 0 and one 1."""
    every_bit = np.unpackbits(bits, bitorder="little")
    mask = every_bit[:length]
    return not every_bit[length:].any() and bool(mask.any()) and not bool(mask.all())
