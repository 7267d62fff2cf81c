"""The experiments the CLI runs on a labeled folder, the ground truth as the oracle, through the
product's own code and no database:

- per_budget: `xal simulate`, the thesis's protocol (a separate run per budget B);
- curve: `xal simulate --curve`, one run per case and seed at the pool's real size;
- pretrain: `xal pretrain` and the per-budget IN-* cases' initial learning;
- roar: `xal roar`, ROAR and KAR over the relevance methods;
- cells: the labeled cells they read and the split no seed changes;
- store: what the protocols share to resume and write their outputs (blob store, JSON, CSV, plots).
"""
