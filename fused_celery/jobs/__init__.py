"""Job steps and how they run: :mod:`.step` (``JobStepConfig``), :mod:`.response`
(``RunResponse``), :mod:`.runners` (the registry by step type), :mod:`.stages` (a job declared as
fan-out stages over a run object) and its drivers, :mod:`.celery_driver` (chained chords) and
:mod:`.local_driver` (this machine); :mod:`.config` (``JobConfig``: steps in sequence as one job)
and :mod:`.compose` (the steps' sequences concatenated into one)."""
