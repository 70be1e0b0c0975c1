"""Tuning records per target, shipped with the package (installed as ``nha_tvm.tuning_logs``)."""
