"""``UdfJobStepConfig``: the model, ``run_local`` on a sample, the whole step on this machine and
``run_remote`` on real workers (outputs in input order)."""

from __future__ import annotations

import pandas as pd
import pytest

import fused_celery as fused
from fused_celery.errors import JobFailedError, StepUdfError, UdfRuntimeError
from fused_celery.steps.udf import UdfJobStepConfig
from fused_celery.steps.udf_stages import UdfStepResponse, run_udf_step


@fused.udf
def square(x: int, offset: int = 0):
    import time

    time.sleep(0.05 * (5 - x) if 0 <= x < 5 else 0)  # later inputs finish first
    return x * x + offset


@fused.udf
def hello(name: str = "world"):
    print("saying hello")
    return f"hello {name}"


@fused.udf
def frame_of(n: int):
    import pandas as pd

    return pd.DataFrame({"i": range(n)})


@fused.udf
def fails_on_two(x: int):
    if x == 2:
        raise ValueError("two is bad")
    return x


def test_model_json_and_set_methods():
    step = UdfJobStepConfig(udf=square, input=[1, 2, 3])
    assert step.type == "udf" and step.ignore_chunk_error is False and step.name is None
    again = UdfJobStepConfig.model_validate_json(step.model_dump_json())
    assert again == step
    assert step.set_input([4]).input == [4] and step.input == [1, 2, 3]
    assert step.set_input(None).input is None
    same = step.set_input([5], inplace=True)
    assert same is step and step.input == [5]
    p = step.set_udf(square, parameters={"offset": 10})
    assert p.udf.parameters == {"offset": 10} and step.udf.parameters == {}
    assert p.set_udf(p.udf, {"x": 1}, replace_parameters=True).udf.parameters == {"x": 1}
    assert step.set_udf(square.code).udf.entrypoint == "square"
    assert UdfJobStepConfig(udf=square.model_dump()).udf.code == square.code
    with pytest.raises(StepUdfError):
        UdfJobStepConfig().run_local()


def test_run_local_on_a_sample():
    step = UdfJobStepConfig(udf=square, input=[3, 4])
    assert step.run_local() == 9  # the first input
    assert step.run_local(5) == 25
    assert step.run_local(sample=2, offset=1) == 5
    assert UdfJobStepConfig(udf=hello).run_local() == "hello world"  # no input: no argument
    assert UdfJobStepConfig(udf=hello).run_local(validate_output=True, name="x") == "hello x"
    with pytest.raises(UdfRuntimeError, match="two is bad"):
        UdfJobStepConfig(udf=fails_on_two, input=[2]).run_local()


@pytest.mark.parametrize("engine", [None, "local"])
def test_whole_step_on_this_machine(engine):
    step = UdfJobStepConfig(udf=square, input=[0, 1, 2, 3, 4]).set_udf(square, {"offset": 1})
    assert run_udf_step(step, engine=engine) == [1, 2, 5, 10, 17]
    assert fused.JobConfig(steps=[step]).run_local(engine=engine)["steps"][0]["outputs"]
    with pytest.raises(UdfRuntimeError, match="input 1: two is bad"):
        run_udf_step(UdfJobStepConfig(udf=fails_on_two, input=[1, 2, 3]), engine=engine)
    kept = UdfJobStepConfig(udf=fails_on_two, input=[1, 2, 3], ignore_chunk_error=True)
    assert run_udf_step(kept, engine=engine) == [1, None, 3]


def test_run_remote_outputs_in_input_order(on_shared_cluster):
    step = UdfJobStepConfig(udf=square, input=[0, 1, 2, 3, 4], name="squares")
    resp = step.run_remote()
    assert isinstance(resp, UdfStepResponse)
    resp.wait_for_job(timeout=120)
    assert resp.status == "Done", resp.get_logs()[-5:]
    assert resp.get_results() == [0, 1, 4, 9, 16]
    assert resp.job_name == "squares" and resp.total_tasks == 6  # 5 calls + the collect
    once = UdfJobStepConfig(udf=hello).run_remote().wait_for_job(timeout=60)
    assert once.get_results() == ["hello world"]
    assert any("the call: saying hello" in line for line in once.get_logs())
    frames = UdfJobStepConfig(udf=frame_of, input=[2, 3]).run_remote().wait_for_job(timeout=60)
    out = frames.get_results()
    assert [len(f) for f in out] == [2, 3] and isinstance(out[0], pd.DataFrame)


def test_run_remote_failure_and_ignore_chunk_error(on_shared_cluster):
    resp = UdfJobStepConfig(udf=fails_on_two, input=[1, 2, 3]).run_remote()
    resp.wait_for_job(timeout=60)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match="two is bad"):
        resp.get_results()
    kept = UdfJobStepConfig(udf=fails_on_two, input=[1, 2, 3], ignore_chunk_error=True)
    resp = kept.run_remote().wait_for_job(timeout=60)
    assert resp.status == "Done"
    assert resp.get_results() == [1, None, 3]
