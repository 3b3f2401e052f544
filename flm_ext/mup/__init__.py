"""µP hyper-parameter transfer and loss prediction (µScaling), docs/FLM.md section 5.

- `coord_check`: the coordinate check that µP is implemented right (activation sizes after a few
  Adam steps stay flat as width grows under µP and drift without it).
- `scaling_fit`: fit L(N) = a * N^b + c to losses of a width series, predict a larger model's loss.
- `sweep`: run orchestration for the grid search, the width sweep and the check run (subprocesses
  of pretrain_flm.py, resumable, parallel, with progress).
The CLI is tools/predict_loss.py.
"""
