"""Prompts and token ids: the checks of `generate()`'s arguments and the left
alignment of prompt rows (in numpy before a call, in the graph inside an export)."""

import numbers

import numpy as np
from keras import ops


def prepare_prompt(prompt, prompt_mask, vocabulary_size, name="prompt"):
    """Check a prompt and left-align its rows: `(tokens (batch, longest), lengths)`.

    `prompt` is int `(batch, length)` with an optional boolean `prompt_mask` of the
    same shape (`True` = a token of the prompt, wherever it is), or a list of token
    lists of different lengths.
    """
    mask_name = f"{name}_mask"
    if (
        prompt_mask is None
        and isinstance(prompt, (list, tuple))
        and prompt
        and all(isinstance(row, (list, tuple, np.ndarray)) for row in prompt)
    ):
        widths = [len(row) for row in prompt]
        if len(set(widths)) > 1:  # ragged: pad and mask
            padded = np.zeros((len(prompt), max(widths)), "int64")
            prompt_mask = np.zeros(padded.shape, bool)
            for i, row in enumerate(prompt):
                padded[i, : len(row)] = row
                prompt_mask[i, : len(row)] = True
            prompt = padded
    tokens = np.asarray(prompt)
    if tokens.ndim != 2 or not (np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0):
        raise ValueError(
            f"`{name}` must be integer tokens of shape (batch, length), or a list of "
            f"token lists. Received: {name}.shape={tokens.shape}, dtype={tokens.dtype}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(
            f"`{name}` must have at least one row and one token. "
            f"Received: {name}.shape={tokens.shape}"
        )
    mask = _prompt_mask(prompt_mask, tokens.shape, name, mask_name)
    lengths = mask.sum(axis=1).astype("int32")
    if (lengths == 0).any():
        raise ValueError(
            f"Every row of `{name}` needs at least one token. Received: {mask_name} "
            f"rows {np.flatnonzero(lengths == 0).tolist()} are all False"
        )
    real = tokens[mask]
    if real.min() < 0 or real.max() >= vocabulary_size:
        raise ValueError(
            f"`{name}` tokens must be ids in [0, vocabulary_size={vocabulary_size}). "
            f"Received: ids from {real.min()} to {real.max()}"
        )
    # Real tokens first, in order, then padding (stable: the key is unique per column).
    width = tokens.shape[1]
    columns = np.arange(width)
    order = np.argsort(np.where(mask, columns, width + columns), axis=1)
    tokens = np.take_along_axis(tokens, order, axis=1)[:, : lengths.max()]
    tokens = np.where(columns[: lengths.max()] < lengths[:, None], tokens, 0)
    return tokens.astype("int32"), lengths


def _prompt_mask(prompt_mask, shape, name, mask_name):
    if prompt_mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(prompt_mask)
    if mask.shape != shape:
        raise ValueError(
            f"`{mask_name}` must have the shape of `{name}`, {shape}. "
            f"Received: {mask_name}.shape={mask.shape}"
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"`{mask_name}` must be boolean (or 0/1). Received values "
                f"{np.unique(mask)[:5].tolist()}"
            )
        mask = mask.astype(bool)
    return mask


def check_token_ids(ids, name, vocabulary_size):
    """`ids` (`None`, one id or several) as a tuple of ints in `[0, vocabulary_size)`;
    a `ValueError` naming `name` otherwise."""
    if ids is None:
        return ()
    if isinstance(ids, (numbers.Integral, np.integer)):
        ids = [ids]
    ids = list(ids)
    bad = [
        i
        for i in ids
        if isinstance(i, bool)
        or not isinstance(i, (numbers.Integral, np.integer))
        or not 0 <= i < vocabulary_size
    ]
    if bad:
        shown = ids if name == "stop_token_ids" else ids[0]
        raise ValueError(
            f"`{name}` must be token ids in [0, vocabulary_size={vocabulary_size}). "
            f"Received: {name}={shown!r}"
        )
    return tuple(int(i) for i in ids)


def left_align(tokens, mask):
    """In-graph version of `prepare_prompt`'s reordering (no checks): the tokens
    where `mask` is `True` moved to the front of each row, in order, zeros after;
    returns `(tokens int32 (batch, width), lengths int32 (batch,))`."""
    mask = ops.cast(mask, "bool")
    width = ops.shape(tokens)[1]
    columns = ops.arange(width, dtype="int32")[None, :]
    order = ops.argsort(ops.where(mask, columns, columns + width), axis=-1)
    tokens = ops.take_along_axis(ops.cast(tokens, "int32"), order, axis=1)
    lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
    return ops.where(columns < lengths[:, None], tokens, 0), lengths
