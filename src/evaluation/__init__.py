"""What the evaluations share, one module per thing: reading any checkpoint layout and building the trunk an
evaluation scores (``pretrained``), frozen-feature extraction and its shards (``features``) and disk caches
(``feature_store``), the orders rows are read in (``samplers``), classifier heads and their test (``classifier``),
weight checksums (``hashes``), the record of scored epochs and the JSON results file (``results``), the kNN search
(``knn``), the linear transfer protocol (``linear_transfer``), segmentation scores (``segmentation``), the
positive-pair evaluations' dataset, flags and features (``pair_eval``), the video evaluations' sets and flags
(``video``), the training monitor (``monitor``) and the demo's kNN comparison (``demo``). May import every other part
of ``src`` (it is the last of src/__init__.py's order), never a script."""
