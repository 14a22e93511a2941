"""``fused-celery deploy``: workers on EC2, one Auto Scaling group per queue (see deploy/README.md).

:mod:`.plan` (pure: resources and changes), :mod:`.config` (options to a plan's input),
:mod:`.user_data` (the instances' script), :mod:`.aws` (boto3: observe, apply), :mod:`.secrets`
(the worker's broker password from SSM), :mod:`.run` (plan/apply/destroy as the CLI runs them).
"""
