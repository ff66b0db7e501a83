"""mathagent's top package: what wires the four layers together.

The layers, each importing only those below it (``lint-imports`` checks it; see pyproject.toml):
``api`` (the gateway) -> ``trainer`` -> ``agent`` (loop, engines, grading) -> ``sandbox``. This
package sits above them all: the ``mathagent`` command line (:mod:`mathagent.cli`), the ``up``
launcher (:mod:`mathagent.stack`), the benchmarks (:mod:`mathagent.bench`) and the one place that
knows every settings class (:mod:`mathagent.settings`).
"""
