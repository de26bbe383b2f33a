import pandas as pd

from sparselora.report.markdown import frame_table, table


def test_table_escapes_pipes_and_has_a_rule_per_column():
    text = table(["a", "b"], [["x|y", 1], ["z", 2.5]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |", "| z | 2.5 |"]


def test_frame_table_formats_floats_only():
    frame = pd.DataFrame({"name": ["svd"], "error": [0.123456], "n": [10]})
    assert frame_table(frame).splitlines()[2] == "| svd | 0.1235 | 10 |"
