"""The features stage: clean events -> (user, as-of time) examples in an encoded dataset folder.

``vocab`` (ids -> indices), ``asof`` (the time split), ``examples`` (one example and its dense
model inputs), ``dataset`` (the folder and its layout), ``encoding`` (a window of events -> a
dataset, and the storage edge), ``cli`` (the ``encode`` command).
"""
