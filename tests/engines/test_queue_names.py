"""Queue names route a task to one worker group: ``<instance_type>[@<region>][:<image_name>]``."""

import pytest

from fused_celery.errors import InstanceTypeError
from fused_celery.queues import QueueSpec, parse_queue, queue_name


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((None,), "fused"),
        (("m5.large",), "m5.large"),
        (("m5.large", "eu-west-1"), "m5.large@eu-west-1"),
        (("m5.large", "eu-west-1", "my-image"), "m5.large@eu-west-1:my-image"),
        (("m5.large", None, "org/img.v2"), "m5.large:org/img.v2"),
    ],
)
def test_names_round_trip(args, name):
    assert queue_name(*args) == name
    spec = parse_queue(name)
    assert spec == QueueSpec(*args)
    assert spec.name == name


def test_bad_parts_are_refused_with_the_fix():
    with pytest.raises(InstanceTypeError, match="not whitelisted"):
        queue_name("m5.gigantic")
    with pytest.raises(ValueError, match="AWS region"):
        queue_name("m5.large", "Europe")
    with pytest.raises(ValueError, match="no ':'"):
        queue_name("m5.large", None, "img:latest")
    with pytest.raises(ValueError, match="give instance_type"):
        queue_name(None, "eu-west-1")
    with pytest.raises(ValueError, match="not a queue name"):
        parse_queue("m5.large@@x")
