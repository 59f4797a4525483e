"""tagger.rules: pure tagging logic, with no I/O.

`rulebook` loads and validates a YAML rulebook, `expression` and `typecheck`
parse and check its conditions, `state` is the per-customer state and its
encoding, `aggregates` folds events into that state, `evaluate` computes
conditions at one instant, and `engine` turns events and clock ticks into tag
changes. The rule language is described in docs/rule-language.md.
"""


def engine_build() -> str:
    """Return "mypyc" when the engine runs as compiled C extensions, "python" when it is pure.

    A regular install compiles the engine's hot modules (see setup.py). An
    editable install, TAGGER_COMPILE=0, or a build without a working C
    compiler keeps them pure.
    """
    from tagger.rules import engine

    return "python" if (engine.__file__ or "").endswith(".py") else "mypyc"
