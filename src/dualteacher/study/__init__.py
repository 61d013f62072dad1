"""Studies of runs: training as users call it (``train``: the engine's loop plus the curves),
comparisons of methods (``compare``, ``demo``), evaluation reports (``report``), timing
(``bench``) and the data check's report (``check``). This floor puts the engine, serving,
data and plots together; the commands call it.
"""
