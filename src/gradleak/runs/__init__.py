"""The floor every command runs on: run specs and plans, run kinds, the one sweep (local
processes or Ray), the one result store, workers and their lifecycle, shared artifacts.

``audit``, ``experiments`` and ``flower`` build plans and read stores through this package; it
knows nothing of them."""
