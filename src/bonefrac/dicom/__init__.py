"""DICOM results of a prediction: a Secondary Capture and a Structured Report (highdicom).

Reading DICOM inputs is :mod:`bonefrac.data.imageio` (with the extra decoders of
:mod:`bonefrac.data.dicom_codecs`): decoding sits below the manifest, writing above the maps.
"""
