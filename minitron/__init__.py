"""Minitron recipes: structured pruning + knowledge distillation on Megatron-Core and Model Optimizer.

Installed, the repository's top-level folders ``conversion/`` and ``deploy/`` are the subpackages
``minitron.conversion`` and ``minitron.deploy`` (pyproject's package-dir). Run from a source checkout
without installing (``PYTHONPATH=<repo>``, as in the GPU containers' scripts), the same names resolve
because the checkout's root is searched for this package's subpackages too.
"""

from pathlib import Path as _Path

_CHECKOUT = _Path(__file__).resolve().parent.parent
if (_CHECKOUT / "conversion" / "__init__.py").is_file() and (_CHECKOUT / "deploy" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 (a package's __path__)
