"""One module per verl trainer hook that the RePO trainer overrides (``integration/trainer.py``).

Each function here takes the trainer (a :class:`~repo_ext.integration.trainer.RePOTrainer`) as its
first argument and runs on the driver (verl's TaskRunner process), never on a worker. The step's
order is in the trainer's module docstring; ``docs/architecture.md`` draws the whole picture.
"""
