"""tagger.rules: pure tagging logic, with no I/O.

`rulebook` loads and validates a YAML rulebook, `expression` and `typecheck`
parse and check its conditions, `state` is the per-customer state and its
encoding, `aggregates` folds events into that state, `evaluate` computes
conditions at one instant, and `engine` turns events and clock ticks into tag
changes. The rule language is described in docs/rule-language.md.
"""
