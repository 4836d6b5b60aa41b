"""The loop: restore, candidates, choices and refine as service calls; the compute worker, uploads, jobs and rate
limits. The web reaches compute only through here."""
