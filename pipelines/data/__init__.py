"""The data stage: source logs -> ``raw/`` -> validated -> ``clean/events/dt=D/`` (canonical events).

- ``formats``: source specs (built-in formats, column maps); ``canonical``: source values to
  canonical candidate columns;
- ``routing``: read a source and route its rows by UTC date; ``landing``: publish them under
  ``raw/events/dt=D/`` (:func:`~pipelines.data.landing.land_events`); ``raw``: read landed files back;
- ``rules``: the row rules (shared by validation and preprocessing); ``expectations``: the Great
  Expectations suites; ``quarantine``: rows set aside; ``handover``: valid rows passed on;
  ``validation``: the validate step, its reports and MLflow numbers;
- ``preprocess``: dedupe, noise control, ``clean/``; ``events``: read clean events back;
- ``synthetic``: generated Taobao-format logs; ``cli``: the ``generate``, ``land``, ``validate``
  and ``preprocess`` commands.

See docs/data.md.
"""
