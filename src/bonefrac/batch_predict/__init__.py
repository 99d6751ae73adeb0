"""``bonefrac predict``'s job: many files -> one predictions CSV, streamed, resumable, one error
row per bad file.

- Inputs: files and folders (recursive): image suffixes, ``.dcm``/``.dicom`` and regular files
  with the DICM magic whatever their name. Files named explicitly are always tried; anything
  that is not a regular file (FIFO, device, socket) becomes an error row without being opened.
- The ``path`` column holds the path's bytes losslessly (:mod:`bonefrac.csvpaths`:
  printable UTF-8 as is, ``%``, control characters and non-UTF-8 bytes as ``%XX``), so every
  row is one line and any file name resumes exactly.
- Rows are appended batch by batch and flushed, so an interrupted job loses at most one batch;
  re-running with the same ``--out`` skips every path already in the CSV (a half-written last
  line from a kill is dropped first). ``<out>.meta.json`` records the model and settings; a
  resume with another model, threshold or temperature is refused unless ``force`` (start
  over). ``retry_errors`` predicts the error rows again.
- A file that cannot be read, or whose model output is not finite, becomes a row with
  ``error`` set; the job goes on. ``BatchSummary`` counts the failures for the exit status.
- Decoding runs in DataLoader worker processes when ``workers > 0``; ``devices > 1`` shards the
  files over that many processes (:mod:`~bonefrac.batch_predict.distributed`), each streaming
  to its own part file, merged into ``out`` at the end (and by any later resume).
- A run without a safeguard (tuned threshold, temperature, out-of-scope detector, refer rule:
  :func:`bonefrac.rundir.missing_safeguards`) still predicts, with one warning per missing
  safeguard per job (logged on stderr by the CLI), and ``BatchSummary.missing_safeguards``
  names them.

Modules: :mod:`~bonefrac.batch_predict.job` (the entry: ``predict_job``, ``predict_to_csv``,
the exit status), :mod:`~bonefrac.batch_predict.stream` (one process's
share: inputs, the CSV, batches -> rows), :mod:`~bonefrac.batch_predict.distributed` (several
processes), :mod:`~bonefrac.batch_predict.sidecar` (``<out>.meta.json``).
"""
