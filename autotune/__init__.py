"""reforge.autotune: MetaSchedule tuning (XGBoost cost model) of compiled models, with reforge's
own design space for its operators and a single-file records database. Imported by the CLI, the
pipeline (records) and the backends (space, timer); it imports passes, topi_ext and the backends."""

from .records import TuningRecords
from .tune import TuneResult, tune

__all__ = ["TuneResult", "TuningRecords", "tune"]
