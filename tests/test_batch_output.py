"""Exported CSVs cannot run formulas in a spreadsheet."""

from __future__ import annotations

import pandas as pd

from serving.batch import write_table


def test_formula_cells_are_neutralised_in_csv_but_kept_in_parquet(tmp_path):
    frame = pd.DataFrame(
        {
            "lead_id": ["=cmd|' /C calc'!A0", "L1", "+1-2", "@SUM(A1)", "-3"],
            "score": [1.5, -2.0, 3.0, 4.0, 5.0],
            "reasons": ["[]", "[]", "[]", "[]", "[]"],
        }
    )
    write_table(frame, tmp_path / "out.csv")
    back = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert back["lead_id"].tolist() == ["'=cmd|' /C calc'!A0", "L1", "'+1-2", "'@SUM(A1)", "'-3"]
    assert back["score"].tolist() == ["1.5", "-2.0", "3.0", "4.0", "5.0"]  # numbers stay numbers
    write_table(frame, tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet")["lead_id"].iloc[0] == "=cmd|' /C calc'!A0"
