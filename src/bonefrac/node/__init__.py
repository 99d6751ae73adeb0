"""``bonefrac node``: a DICOM node that receives radiographs and returns results to PACS.

A Storage SCP (pynetdicom, :mod:`.receive`) writes every accepted instance to a spool before
answering success (:mod:`.spool`); a worker predicts one instance at a time with the run's
Predictor and writes the same Secondary Capture and SR as ``predict --dicom-out``
(:mod:`.work`, :mod:`bonefrac.dicom.write`), plus one study SR when a study is quiet
(:mod:`.studies`); a sender per destination delivers them by C-STORE or STOW-RS with retries
and a dead-letter folder (:mod:`.send`). :class:`~.service.Node` composes them. The node sits
beside serving: it uses inference, dicom and the study aggregation, and nothing below imports
it. docs/node.md: set-up, configuration, how to register the node in a PACS.
"""
