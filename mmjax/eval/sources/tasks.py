"""The two kinds of benchmark and the image files a webdataset sample may hold."""

CLASSIFICATION = "zeroshot_classification"  # examples (image, label); batches (uint8 [b, S, S, 3], int64 [b])
RETRIEVAL = "zeroshot_retrieval"  # examples (image, captions); batches (uint8 [b, S, S, 3], b caption lists)

IMAGE_EXTENSIONS = ("webp", "jpg", "jpeg", "png")
