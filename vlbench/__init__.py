"""vlbench: a benchmark harness for parameter-efficient transfer learning on vision-and-language models."""

from vlbench import compat  # noqa: F401  (must run before open_clip / transformers are imported)

__version__ = "0.1.0"
