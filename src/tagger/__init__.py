"""customer-tagger: real-time customer tags from Kafka events.

The code lives in three subpackages: ``tagger.schemas`` (what flows in and
out), ``tagger.rules`` (pure tagging logic, no I/O) and ``tagger.streams``
(Faust wiring, the Redis mirror, metrics and the CLI).
"""

__version__ = "0.1.0"
