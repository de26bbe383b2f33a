"""The `sparselora` command line: a table of library calls, one module per command group.

``core`` holds the app, the shared options and the one error mechanism; each other module registers its
commands on import, in the order ``--help`` lists them.
"""

# isort: off
from sparselora.cli import runs, sparse, compare, inspect, study  # noqa: F401  (register the commands)
from sparselora.cli.core import app, main, report_errors_of

# isort: on

report_errors_of(app)

__all__ = ["app", "main"]
