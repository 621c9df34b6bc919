"""reforge.autotune: MetaSchedule tuning of compiled models."""
