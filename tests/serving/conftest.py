"""The classifier most of the service's tests serve: the tiny model on one thread."""

import pytest

from distilsent import Classifier


@pytest.fixture(scope="module")
def clf(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir, threads=1)
