"""One module per verl trainer hook that the RePO trainer overrides (``integration/trainer.py``).

A hook's function takes the trainer (a :class:`~repo_ext.integration.trainer.RePOTrainer`) as its
first argument; everything here runs on the driver (verl's TaskRunner), never on a worker.
``step_state`` (what one step knows about its rows), ``layout`` (the passes' batch layout) and
``row_dump`` (the debugging dump) serve several hooks. The step's order is in the trainer's module
docstring; ``docs/architecture.md`` draws the whole picture.
"""
