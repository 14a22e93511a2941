"""The worker's side of the broker password: read from SSM Parameter Store at start.

On an instance started by ``deploy`` the broker URL carries no password and
``options.deploy_broker_password_parameter`` names the SecureString holding it;
``fused-celery worker`` calls :func:`resolve_broker_url` before it starts Celery, through the
instance role (boto3's standard chain). The password is never printed or logged.
"""

from __future__ import annotations

from fused_celery.deploy.config import with_password
from fused_celery.errors import DeployError
from fused_celery.options import Options, mask_url

__all__ = ["resolve_broker_url"]


def resolve_broker_url(opts: Options) -> str | None:
    """``opts.broker_url`` with the password read from ``opts.deploy_broker_password_parameter``
    (region ``opts.aws_region`` or boto3's); ``opts.broker_url`` unchanged when no parameter is
    set. Raises :class:`DeployError` naming the parameter (not its value) when it cannot be read.
    """
    url, parameter = opts.broker_url, opts.deploy_broker_password_parameter
    if not parameter or not url:
        return url
    import boto3

    try:
        ssm = boto3.session.Session().client("ssm", region_name=opts.aws_region or None)
        value = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    except Exception as exc:  # noqa: BLE001 - botocore errors carry no secret
        raise DeployError(
            f"cannot read the broker password from the SSM parameter {parameter!r} "
            f"(deploy_broker_password_parameter) for {mask_url(url)}: {exc}. The instance role "
            "needs ssm:GetParameter on it (see deploy/README.md)"
        ) from None
    return with_password(url, value)
