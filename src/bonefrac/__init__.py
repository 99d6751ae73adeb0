"""bonefrac: fracture classifiers for limb radiographs, from manifest to served model."""

__version__ = "0.1.0"
