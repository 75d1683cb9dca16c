//! Operator operations on checkpoints (split, merge, reset, history, add partitions, validate,
//! lag, assignments), each as a plan (computed, printable, no side effects) and an apply step
//! (one transaction). No prompts and no printing here: the CLI and the Django commands do that.
