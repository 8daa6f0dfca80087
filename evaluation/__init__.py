"""What evaluates policies and reward models, apart from what trains them.

- `held_out.py`: a policy's answers on held-out rows per task family (rule match for closed questions, a
  scene score for descriptions; greedy and sampled), and whether it collapsed onto few answers; the
  held-out curve `brl compare` plots (`HeldOutCallback`).
- `policy_benchmarks.py`: the paper's policy benchmarks through lmms-eval (`brl eval-bench`).
- `rm_benchmarks.py`: the reward benchmarks in their published schemas (`brl eval-rm`).
- `rm_metrics.py`: their metrics, and the pair scorers (scalar reward models, judges, baselines).
"""
