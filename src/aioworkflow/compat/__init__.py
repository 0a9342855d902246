"""Drop-in layers for code written against other workflow libraries.

* :mod:`aioworkflow.compat.dramatiq_workflow`: dramatiq-workflow 0.3.0's names and signatures
  (see ``docs/migrating.md``).
"""
