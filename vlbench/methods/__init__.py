"""Method registry: a new method is one module in this package plus one line here."""

from vlbench.config import UserError
from vlbench.methods.adapter import Adapter
from vlbench.methods.base import Method
from vlbench.methods.full import FullFineTuning

METHODS: dict[str, type[Method]] = {
    "full": FullFineTuning,
    "adapter": Adapter,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"--methods: unknown method '{name}' (choose from {', '.join(METHODS)})")
    return METHODS[name]
