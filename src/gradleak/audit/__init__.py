"""The practitioner's audit (paper Sec. 7): the risk ladder, its verdict and the defense
recommendation, all run by the one sweep (:func:`gradleak.runs.sweep.run_sweep`).

* :mod:`~gradleak.audit.scenarios`: an audit plan (``configs/audit.yaml`` or ``--plan``) as a sweep;
* :mod:`~gradleak.audit.ladder`: the user's setup attacked by a ladder of server strengths;
* :mod:`~gradleak.audit.verdict`: pure rules from stored runs to ``leaks`` / ``does not leak`` /
  ``inconclusive``;
* :mod:`~gradleak.audit.recommend`: the defense sweep, the cheapest safe setting and the most
  vulnerable layers;
* :mod:`~gradleak.audit.run`: the whole audit of a setup, ending in ``verdict.json``.
"""
