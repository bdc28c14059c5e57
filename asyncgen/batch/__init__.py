"""The Batch API workflow (``asyncgen batch ...``), one module per stage:

- ``plan``: how many requests a round needs, their lines (the same request body as ``run``), the
  files and the cost (pure);
- ``pilot``: a few real-time requests through ``run``'s stages that measure the yield first;
- ``manifest``: the batch directory's state, replaced atomically;
- ``api``: the Files and Batch API calls, errors as one line;
- ``lifecycle``: submit (kill-safe: intent first, then found again by metadata), refresh,
  download, cancel, and what an expired or cancelled batch left to resubmit;
- ``process``: result files -> the validator pool -> the acceptance path shared with ``run``.

The command line is ``asyncgen/commands/batch.py``.
"""
