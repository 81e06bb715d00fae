"""What the evaluations share: reading any checkpoint layout and loading its trunk (``pretrained``), building a
trunk for an evaluation and writing its results (``pair_eval``), frozen-feature extraction (``features``), linear
heads, their test and feature caches (``classifier``), and the demo's kNN comparison (``demo``). Imports every other
part of ``src``, never a script."""
