"""A worker leaving an instance: notices from the EC2 instance metadata service, and the
termination lifecycle action completed once the worker has drained.

The metadata service (IMDSv2: a session token from ``PUT /latest/api/token``, then ``GET``\\ s with
it) tells an instance that it is going away in two ways, both polled here:

- ``/latest/meta-data/spot/instance-action``: 404 normally; JSON ``{"action", "time"}`` about two
  minutes before a spot instance is stopped or terminated;
- ``/latest/meta-data/autoscaling/target-lifecycle-state``: ``InService``, or ``Terminated`` once
  its Auto Scaling group decided to terminate it (the group then waits in ``Terminating:Wait``
  for the lifecycle hook ``options.drain_lifecycle_hook`` to be completed).

The worker side (:mod:`fused_celery.engines.celery.presence`) polls with :class:`DrainWatcher`,
makes the worker shut down warm on a notice (it stops consuming, finishes its running entries;
messages it had reserved go back to the queue), and calls :func:`complete_lifecycle_action` at
the end. The endpoint is ``options.drain_metadata_url``, so tests point it at a loopback server.
The HTTP client is the standard library's: four small requests need no dependency (botocore's
metadata fetcher is internal API).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
SPOT_PATH = "/latest/meta-data/spot/instance-action"
LIFECYCLE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"

#: Seconds an IMDSv2 token is asked for (and reused for a bit less).
TOKEN_TTL = 21600


@dataclass(frozen=True)
class Notice:
    """Why the instance is going away: ``kind`` (``spot`` or ``lifecycle``) and ``detail``."""

    kind: str
    detail: str


class MetadataClient:
    """The instance metadata service at ``url`` (IMDSv2). timeout: seconds per request
    (default 2)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None

    def _request(self, path: str, *, method: str = "GET", headers: dict[str, str]) -> str | None:
        request = urllib.request.Request(self.url + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code == 401:  # token expired
                self._token = None
            raise

    def token(self) -> str:
        """An IMDSv2 session token (asked once, reused)."""
        if self._token is None:
            got = self._request(
                TOKEN_PATH,
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
            )
            if not got:
                raise OSError(f"the metadata service at {self.url} gave no token")
            self._token = got.strip()
        return self._token

    def get(self, path: str) -> str | None:
        """The text at ``path`` (None for 404)."""
        return self._request(path, headers={"X-aws-ec2-metadata-token": self.token()})

    def available(self) -> bool:
        """True when the service answers with a token (i.e. this is an EC2 instance)."""
        try:
            self.token()
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    def notice(self) -> Notice | None:
        """A spot interruption notice or a terminating lifecycle state, if there is one."""
        spot = self.get(SPOT_PATH)
        if spot:
            try:
                data = json.loads(spot)
                detail = f"spot interruption: {data.get('action')} at {data.get('time')}"
            except ValueError:
                detail = f"spot interruption: {spot.strip()}"
            return Notice("spot", detail)
        state = (self.get(LIFECYCLE_PATH) or "").strip()
        if state == "Terminated":
            return Notice("lifecycle", "target lifecycle state Terminated")
        return None

    def instance_id(self) -> str | None:
        """This instance's id."""
        found = self.get(INSTANCE_ID_PATH)
        return found.strip() if found else None


class DrainWatcher:
    """A daemon thread polling ``client`` every ``interval`` s; on the first notice it calls
    ``on_notice(notice)`` once and stops. Errors of a poll are logged and the next poll tries
    again."""

    def __init__(
        self, client: MetadataClient, interval: float, on_notice: Callable[[Notice], Any]
    ) -> None:
        self.client = client
        self.interval = interval
        self.on_notice = on_notice
        self.notice: Notice | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fused-drain-watch", daemon=True)

    def start(self) -> DrainWatcher:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (does not wait)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                notice = self.client.notice()
            except Exception as exc:  # noqa: BLE001 - a failed poll is retried
                logger.warning("fused-celery drain: metadata poll failed: %s", exc)
                continue
            if notice is not None:
                self.notice = notice
                self._stop.set()
                self.on_notice(notice)
                return


def complete_lifecycle_action(
    instance_id: str, hook: str, *, client: Any = None, result: str = "CONTINUE"
) -> bool:
    """Complete the termination lifecycle action ``hook`` of ``instance_id`` (its group is looked
    up with ``DescribeAutoScalingInstances``). client: a boto3 ``autoscaling`` client (default:
    one from boto3's standard chain). Returns False when the instance is in no group or has no
    action waiting (nothing to complete)."""
    import botocore.exceptions

    if client is None:
        import boto3

        client = boto3.client("autoscaling")
    found = client.describe_auto_scaling_instances(InstanceIds=[instance_id])
    rows = found.get("AutoScalingInstances") or []
    if not rows:
        return False
    group = rows[0]["AutoScalingGroupName"]
    try:
        client.complete_lifecycle_action(
            LifecycleHookName=hook,
            AutoScalingGroupName=group,
            LifecycleActionResult=result,
            InstanceId=instance_id,
        )
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationError":
            return False  # no lifecycle action waits for this instance
        raise
    return True
