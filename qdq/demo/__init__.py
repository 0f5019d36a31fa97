"""``qdq demo``: the main job on an embedded default (PP-OCRv4's text detector from a PyPI wheel,
images with text made from scikit-image's photos).  Needs the ``demo`` extra (Pillow, scikit-image)."""
