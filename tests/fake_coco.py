"""A prepared TFDS `coco_captions` (array_record, written without TensorFlow) for tests."""

import numpy as np
from PIL import Image


def write_fake_coco_captions(data_dir: str, split: str, examples: list[tuple[Image.Image, list[str]]]) -> None:
    """`examples`: (image, captions) pairs; example i gets `image/id` 100 + i."""
    import tensorflow_datasets as tfds

    class FakeCocoCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "coco_captions"
        VERSION = tfds.core.Version("1.1.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image/id": np.int64,
                "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64})}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples()}

        def _generate_examples(self):
            for i, (image, texts) in enumerate(examples):
                yield i, {"image": image, "image/id": 100 + i,
                          "captions": [{"text": t, "id": j} for j, t in enumerate(texts)]}

    FakeCocoCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
