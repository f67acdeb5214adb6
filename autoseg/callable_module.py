"""Modules that run one of their functions when called: `autoseg.export(...)`.

The Python API names its verbs after the modules that hold them (`autoseg.search`,
`autoseg.export`, `autoseg.predict`, `autoseg.evaluate`, `autoseg.leaderboard`). A plain
function cannot keep such a name on the package: importing the submodule `autoseg.export`
(as the CLI and the tests do) rebinds the package attribute to the module. So the module
itself is made callable, and `autoseg.export` is the same object whichever import came first.
"""

from __future__ import annotations

import inspect
import sys
import types


class CallableModule(types.ModuleType):
    """A module whose call runs its function named by the class attribute `call_target`.

    The function is looked up at each call, so replacing it on the module (a test's
    `monkeypatch.setattr`) replaces what the call runs too.
    """

    call_target: str = ""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.call_target)(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        # `inspect.signature(autoseg.export)` and IDEs then show the function's arguments.
        return inspect.signature(getattr(self, self.call_target))


def make_callable(module_name: str, function_name: str) -> None:
    """Makes a loaded module callable: calling it calls `module.<function_name>`.

    Args:
        module_name: The module's `__name__`; it must be in `sys.modules`.
        function_name: The name of the module's function that a call runs.

    Raises:
        AttributeError: the module has no callable attribute `function_name` (a typo in
            the call at the module's end, caught at its import).

    Example:
    ```python
    # at the end of autoseg/export.py
    make_callable(__name__, "export")
    ```
    """
    module = sys.modules[module_name]
    if not callable(getattr(module, function_name, None)):
        raise AttributeError(
            f"{module_name} has no function {function_name!r} to call. Received: "
            f"function_name={function_name!r}."
        )
    module.__class__ = type("CallableModule", (CallableModule,), {"call_target": function_name})
