"""Video data for video SCE (docs/video.md): decoding (``io``), clip sampling and temporal difference
(``clips``), time-consistent augmentations (``transforms``), datasets (``dataset``), the UCF101 / HMDB51 split files
(``splits``) and a generated demo dataset (``demo``). ``build`` assembles them for the scripts."""
