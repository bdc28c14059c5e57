"""The Batch API workflow (``asyncgen batch ...``), one module per stage:

- ``plan``: how many requests a round needs, their lines (the same request body as ``run``), the
  files and the cost (pure);
- ``pilot``: a few real-time requests through ``run``'s stages that measure the yield first;
- ``ledger``: which requests the directory made (its id in every custom_id) and which are answered
  (each counted once, whatever file it comes in) (pure);
- ``manifest``: the batch directory's state, replaced atomically, and its one-writer lock;
- ``api``: the Files and Batch API calls, errors as one line;
- ``endpoint``: where a directory's requests go (where its batches went, else the flags') and the
  ``BatchApi`` client for it (offline: the built-in simulator);
- ``lifecycle``: submit (kill-safe: intent first, then found again by metadata), refresh,
  download, cancel, what an expired or cancelled batch left to resubmit, and a lost manifest's
  entries recovered from the request files and the API's batch list;
- ``process``: result files -> the validator pool -> the acceptance path shared with ``run``.

The command line is ``asyncgen/commands/batch/``, a module per subcommand's stage.
"""
