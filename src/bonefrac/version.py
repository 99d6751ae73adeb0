"""The package version (bottom layer: model.json, DICOM output and the API record it)."""

__version__ = "0.1.0"
