"""The model stage: network, pyfunc (scoring contract), train, baselines, metrics, evaluate, plots,
registry (see docs/design.md)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Backward compatibility, for this one name only: model versions registered before the package
    # was split pickled their python_model as ``pipelines.model.InterestMigrationPyfunc`` (then a
    # module, pipelines/model.py). Unpickling them looks the class up here; it now lives in
    # pipelines.model.pyfunc. Imported on access so that importing this package stays light.
    if name == "InterestMigrationPyfunc":
        from pipelines.model.pyfunc import InterestMigrationPyfunc

        return InterestMigrationPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
