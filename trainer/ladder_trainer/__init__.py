"""ladder_trainer: the wall-clock-budgeted micro-pretraining runner behind every ladder cell.

`python -m ladder_trainer --config JSON --seed N --budget 2m --result-file PATH` trains a small
GPT for the budget and reports val_bpb as a CellResult (see docs/trainer.md).
"""
