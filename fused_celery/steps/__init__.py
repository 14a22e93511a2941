"""Job steps that run UDFs: :mod:`.udf` (``UdfJobStepConfig``, one call per input value) and
:mod:`.map` (``MapJobStepConfig``, ``fused.map``: a UDF per chunk of a table) and :mod:`.join`
(``JoinJobStepConfig``, ``JoinSinglefileJobStepConfig``: spatial joins on the map stages), their
stages (:mod:`.udf_stages`, :mod:`.map_stages`, :mod:`.join_stages`) and runners
(:mod:`.map_runners`, :mod:`.join_runners`), registered here by
dotted name (:func:`fused_celery.jobs.runners.register`). :mod:`.base` holds what they share.
"""

from fused_celery.jobs.runners import register

register(
    "udf",
    run_local="fused_celery.steps.udf_stages:run_udf_step",
    stages="fused_celery.steps.udf_stages:UDF_STEP",
    make_run="fused_celery.steps.udf_stages:make_udf_run",
    model="fused_celery.steps.udf:UdfJobStepConfig",
    response="fused_celery.steps.udf_stages:UdfStepResponse",
)
register(
    "map",
    run_local="fused_celery.steps.map_runners:run_map",
    stages="fused_celery.steps.map_stages:MAP_STEP",
    make_run="fused_celery.steps.map_runners:make_map_run",
    model="fused_celery.steps.map:MapJobStepConfig",
)
for _kind, _sequence, _model in (
    ("join", "JOIN_STEP", "JoinJobStepConfig"),
    ("join_singlefile", "JOIN_SINGLEFILE_STEP", "JoinSinglefileJobStepConfig"),
):  # the join runs through the map step's runners, with its own make_run and stages
    register(
        _kind,
        run_local="fused_celery.steps.map_runners:run_map",
        stages=f"fused_celery.steps.join_stages:{_sequence}",
        make_run="fused_celery.steps.join_runners:make_join_run",
        model=f"fused_celery.steps.join:{_model}",
    )
