"""The as-of plan: which (UTC midnight) as-of times feed training, validation and test.

As-of times are laid on one time line: training, then validation, then test, each split's label
windows ending before the next split's first as-of time, so no label is seen by an earlier split
(the evaluation protocol of ``docs/design.md``).
"""

from __future__ import annotations

import datetime as dt

from pipelines.platform.dates import floor_day

SPLITS = ("train", "validation", "test")


def plan_asof_times(first_event: dt.datetime, data_end: dt.datetime, *, horizon_days: float,
                    train_step_days: int, eval_step_days: int, validation_count: int,
                    test_count: int) -> dict[str, list[dt.datetime]]:
    """As-of times per split (keys :data:`SPLITS`), at UTC midnights, oldest first.

    ``data_end`` is the first instant with no data. The last test as-of time leaves a full horizon
    before ``data_end``; validation as-of times end one horizon before the first test one, training
    ones one horizon before the first validation one (no label window overlaps a later split's).
    Training goes back while there is at least one day of history. Raises ValueError (with the
    dates) when the window is too short for one training as-of time.
    """
    horizon = dt.timedelta(days=horizon_days)
    last_test = floor_day(data_end - horizon)
    test = [last_test - dt.timedelta(days=eval_step_days * i) for i in range(test_count)][::-1]
    last_val = floor_day(test[0] - horizon)
    validation = [last_val - dt.timedelta(days=eval_step_days * i) for i in range(validation_count)][::-1]
    train: list[dt.datetime] = []
    t = floor_day(validation[0] - horizon)
    earliest = first_event + dt.timedelta(days=1)
    while t >= earliest:
        train.append(t)
        t -= dt.timedelta(days=train_step_days)
    if not train:
        # a day of history, then three label windows (training, validation, test) and the as-of spacing
        needed = 1 + 3 * horizon_days + eval_step_days * (validation_count + test_count - 2)
        raise ValueError(
            f"data from {first_event.isoformat()} to {data_end.isoformat()} is too short for horizon "
            f"{horizon_days} days with {validation_count} validation and {test_count} test as-of times "
            f"(first validation as-of {validation[0].isoformat()}): it needs about {needed:g} days of events "
            f"(1 day of history + 3 horizons + {eval_step_days} x {validation_count + test_count - 2} days between "
            "as-of times); train on a longer window, or lower IM_HORIZON_DAYS, IM_VALIDATION_ASOF_COUNT, "
            "IM_TEST_ASOF_COUNT or IM_EVAL_ASOF_STEP_DAYS")
    return {"train": train[::-1], "validation": validation, "test": test}
