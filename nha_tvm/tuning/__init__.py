"""Per-GPU autotuning: MetaSchedule with the XGBoost cost model over the project's design spaces.

``workloads`` binds kernels to tuning buckets, ``search`` runs the search, ``records`` reads the
shipped and the user's databases at build time, ``cli`` is ``nha-tune``.
"""
