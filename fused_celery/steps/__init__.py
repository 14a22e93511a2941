"""Job steps that run UDFs: :mod:`.udf` (``UdfJobStepConfig``, one call per input value) and
:mod:`.map` (``MapJobStepConfig``, ``fused.map``: a UDF per chunk of a table), their stages
(:mod:`.udf_stages`, :mod:`.map_stages`) and runners (:mod:`.map_runners`), registered here by
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
