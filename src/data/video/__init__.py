"""Video data for video SCE (docs/video.md): decoding (``io``), clip sampling and temporal difference
(``clips``), datasets (``dataset``), the UCF101 / HMDB51 split files and the splits read from folders (``splits``)
and a generated demo dataset (``demo``). The clip augmentations are ``src.augment.video``; the evaluations' video
sets ``src.evaluation.video``."""
