"""Fracture maps of a model: CAM and gradient adapters, overlays, the pointing-game score.

Below inference in the layers (the Predictor takes Grad-CAM from here for a classification
run); the ``bonefrac explain`` job that uses them over a run directory is :mod:`bonefrac.explain`.
"""
