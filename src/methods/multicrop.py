"""Multi-crop batches: which crops share a resolution (one forward each group)."""


def resolution_groups(crops):
    """(start, end) index pairs of consecutive crops with the same spatial size.

    Args:
        crops: list of (B, 3, H_i, W_i) tensors, e.g. 2 x 224 then 6 x 96.
    Returns:
        list of (start, end) pairs, e.g. [(0, 2), (2, 8)].
    """
    groups, start = [], 0
    for end in range(1, len(crops) + 1):
        if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
            groups.append((start, end))
            start = end
    return groups
