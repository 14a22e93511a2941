"""``collect()``'s frame rules (API.md §2), tested on :func:`fused_celery.collect.build_frame`."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest

from fused_celery.collect import arg_index, arg_names, build_frame, index_value

ARGS = [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}, {"x": 3, "y": "c"}]


def test_keys_choose_the_levels() -> None:
    args = [{"x": 1, "y": 7}, {"x": 2, "y": 7}]
    frame = build_frame([0, 1], args, [8, 9], keys=["x"])
    assert frame.index.name == "x" and frame.index.tolist() == [1, 2]


def _frame(values, rows=("r0", "r1")):
    return pd.DataFrame({"v": list(values)}, index=pd.Index(list(rows)[: len(values)], name="row"))


def test_scalar_results_go_to_a_result_column_indexed_by_the_argument() -> None:
    frame = build_frame([0, 1], [{"x": 1}, {"x": 2}], [10, 20])
    assert list(frame.columns) == ["result"]
    assert frame.index.name == "x" and frame.index.tolist() == [1, 2]
    assert frame["result"].tolist() == [10, 20]
    assert frame["result"].dtype == np.int64  # inferred, not object


def test_one_index_level_per_parameter_named_after_it() -> None:
    frame = build_frame([0, 1, 2], ARGS, [1.5, 2.5, 3.5])
    assert isinstance(frame.index, pd.MultiIndex)
    assert list(frame.index.names) == ["x", "y"]
    assert frame.index.tolist() == [(1, "a"), (2, "b"), (3, "c")]
    assert frame.loc[(2, "b"), "result"] == 2.5


def test_parameter_order_is_first_appearance_and_missing_values_are_none() -> None:
    args = [{"b": 1}, {"a": 2, "b": 3}]
    assert arg_names(args) == ["b", "a"]
    frame = build_frame([0, 1], args, ["p", "q"])
    assert list(frame.index.names) == ["b", "a"]
    assert frame.index.get_level_values("b").tolist() == [1, 3]
    a = frame.index.get_level_values("a")
    assert pd.isna(a[0]) and a[1] == 2  # a missing argument is a missing label


def test_list_and_dict_arguments_are_shown_as_json_text() -> None:
    args = [{"x": [1, 2]}, {"x": {"b": 1, "a": [2]}}, {"x": (3,)}]
    frame = build_frame([0, 1, 2], args, ["p", "q", "r"])
    # as the reference SDK sends them: JSON text, dict keys in their own order
    assert frame.index.tolist() == ["[1, 2]", '{"b": 1, "a": [2]}', "[3]"]


def test_index_value() -> None:
    assert index_value(None) is None
    assert index_value(3) == 3 and index_value("s") == "s"
    assert index_value(True) == "true" and index_value(False) == "false"  # JSON, as the SDK
    assert index_value(np.int64(4)) == 4 and type(index_value(np.int64(4))) is int
    assert index_value(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert index_value({2, 1}) == "[1, 2]"
    assert index_value(pd.DataFrame({"a": [1]})) == '[{"a":1}]'
    import shapely

    assert index_value(shapely.Point(1, 2)) == "POINT (1 2)"


def test_failures_dropped_positions_not_renumbered() -> None:
    # entries 1 and 3 failed: the survivors keep positions 0, 2, 4
    args = [{"x": i} for i in range(5)]
    frame = build_frame([0, 2, 4], args, [0, 20, 40], drop_index=True)
    assert frame.index.name == "arg_pos"
    assert frame.index.tolist() == [0, 2, 4]
    by_args = build_frame([0, 2, 4], args, [0, 20, 40])
    assert by_args.index.tolist() == [0, 2, 4]
    assert by_args["result"].tolist() == [0, 20, 40]


def test_drop_index_of_values_gives_a_single_arg_pos_level() -> None:
    frame = build_frame([0, 2], ARGS, ["a", "c"], drop_index=True)
    assert not isinstance(frame.index, pd.MultiIndex)
    assert frame.index.name == "arg_pos" and frame.index.tolist() == [0, 2]


def test_dataframe_results_are_concatenated_with_their_row_index_as_extra_level() -> None:
    frames = [_frame([1, 2]), _frame([3])]
    frame = build_frame([0, 2], ARGS, frames)
    assert list(frame.columns) == ["v"]
    assert list(frame.index.names) == ["x", "y", "row"]
    assert frame.index.tolist() == [(1, "a", "r0"), (1, "a", "r1"), (3, "c", "r0")]
    assert frame["v"].tolist() == [1, 2, 3]


def test_dataframe_results_with_unnamed_and_multi_indexes() -> None:
    unnamed = build_frame([0], [{"x": 1}], [pd.DataFrame({"v": [5, 6]})])
    assert list(unnamed.index.names) == ["x", None]
    assert unnamed.index.tolist() == [(1, 0), (1, 1)]
    multi = pd.DataFrame(
        {"v": [1, 2]},
        index=pd.MultiIndex.from_tuples([("p", 1), ("q", 2)], names=["k1", "k2"]),
    )
    frame = build_frame([0], [{"x": 9}], [multi])
    assert list(frame.index.names) == ["x", "k1", "k2"]
    assert frame.index.tolist() == [(9, "p", 1), (9, "q", 2)]


def test_dataframe_results_with_drop_index() -> None:
    # arg_pos replaces the argument levels; each frame's own index stays (as in the SDK)
    frame = build_frame([1, 2], ARGS, [_frame([1, 2]), _frame([3])], drop_index=True)
    assert list(frame.index.names) == ["arg_pos", "row"]
    assert frame.index.tolist() == [(1, "r0"), (1, "r1"), (2, "r0")]
    assert frame["v"].tolist() == [1, 2, 3]


def test_empty_dataframe_results_are_kept_in_the_concat() -> None:
    frame = build_frame([0, 1], ARGS, [_frame([]), _frame([7])])
    assert frame.index.tolist() == [(2, "b", "r0")]
    assert frame["v"].tolist() == [7]


def test_flatten_false_keeps_frames_in_a_result_column() -> None:
    frames = [_frame([1, 2]), _frame([3])]
    frame = build_frame([0, 1], ARGS, frames, flatten=False)
    assert list(frame.columns) == ["result"]
    assert frame.index.tolist() == [(1, "a"), (2, "b")]
    assert frame["result"].iloc[0] is frames[0]


def test_mixed_frames_and_values_go_to_a_result_column() -> None:
    frames = [_frame([1]), 5]
    frame = build_frame([0, 1], ARGS, frames)
    assert list(frame.columns) == ["result"]
    assert frame["result"].iloc[1] == 5
    assert frame["result"].dtype == object


def test_mixed_scalar_types_and_none_stay_object() -> None:
    frame = build_frame([0, 1, 2], ARGS, [1, None, {"k": 1}])
    assert frame["result"].tolist() == [1, None, {"k": 1}]
    assert frame["result"].dtype == object


def test_no_surviving_entries_gives_an_empty_frame() -> None:
    frame = build_frame([], ARGS, [])
    assert len(frame) == 0
    assert list(frame.columns) == ["result"]
    dropped = build_frame([], ARGS, [], drop_index=True)
    assert dropped.index.name == "arg_pos" and len(dropped) == 0


def test_entries_without_arguments_are_indexed_by_position() -> None:
    frame = build_frame([0, 1], [{}, {}], ["a", "b"])
    assert frame.index.name == "arg_pos" and frame.index.tolist() == [0, 1]
    frames = build_frame([0, 1], [{}, {}], [_frame([1]), _frame([2])])
    assert frames.index.tolist() == [(0, "r0"), (1, "r0")]


@pytest.mark.parametrize("drop_index", [False, True])
def test_arg_index(drop_index: bool) -> None:
    index = arg_index([2, 0], ARGS, drop_index)
    if drop_index:
        assert index.tolist() == [2, 0] and index.name == "arg_pos"
    else:
        assert index.tolist() == [(3, "c"), (1, "a")]
