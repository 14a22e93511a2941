"""``steps.task_order.spread_order``: the order a join's tasks are handed out in, so that
consumers taking them in turn each get a contiguous share of the spatially ordered tasks; and
``join_items`` hands a join's left files out in that order."""

from __future__ import annotations

from join_tables import join_inputs

import fused_celery as fused
from fused_celery.steps import join_stages
from fused_celery.steps.task_order import spread_order


def test_a_permutation():
    for n in range(0, 300):
        assert sorted(spread_order(n)) == list(range(n)), n


def test_two_consumers_get_a_half_each_of_an_even_count():
    for n in range(2, 300, 2):
        order = spread_order(n)
        assert sorted(order[0::2]) == list(range(n // 2)), n
        assert sorted(order[1::2]) == list(range(n // 2, n)), n


def test_four_consumers_get_contiguous_quarters_of_a_multiple_of_four():
    for n in range(4, 300, 4):
        order = spread_order(n)
        shares = [sorted(order[j::4]) for j in range(4)]
        for share in shares:
            assert share == list(range(share[0], share[0] + len(share))), n
        assert sorted(s[0] for s in shares) == [j * n // 4 for j in range(4)], n


def test_join_hands_out_the_left_files_in_that_order(tmp_path):
    from fused_celery.steps.join_runners import make_join_run

    left, right = join_inputs(tmp_path)
    step = fused.join(left, right, output_table=str(tmp_path / "o"), chunks_per_task=1)
    run = make_join_run(step, None, job_id="order", overwrite=True, check_input=True)
    _, batches = join_stages.join_items(run)
    spatial = sorted(batches, key=join_stages._spatial_key)
    assert [b[0]["file_id"] for b in spatial] == sorted((b[0]["file_id"] for b in batches), key=int)
    assert batches == [spatial[i] for i in spread_order(len(spatial))]
    assert len(batches) > 2 and batches != spatial
