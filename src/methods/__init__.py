"""What several method scripts share: the key queue, momentum (EMA) updates, shuffle/split BN, and
each method's model assembly (``moco.py``)."""
