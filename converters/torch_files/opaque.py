"""Inert stand-ins for the objects a training checkpoint keeps beside its weights.

A Lightning (or hand-rolled) checkpoint's ``hyper_parameters`` may hold an omegaconf config
(Hydra), paths, an argparse Namespace or Lightning's AttributeDict. None of them is needed to read
the weights, and none is ever imported or called: each class a pickle names from the list below
stands in as an ``OpaqueClass`` marker, and what the pickle builds from it (a call, NEWOBJ, BUILD)
is an ``OpaqueValue`` holding the arguments and state as plain data. Dict subclasses are read as
plain dicts (their items are what they hold).
"""

from __future__ import annotations

from typing import Any

# whole packages whose classes are data only
OPAQUE_PACKAGES = ("omegaconf",)
OPAQUE_CLASSES = frozenset({
    "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePath",
    "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "argparse.Namespace", "typing.Any",
    # type objects named as values (omegaconf's metadata: key and element types)
    "builtins.int", "builtins.long", "builtins.float", "builtins.str", "builtins.bool",
    "builtins.object", "builtins.NoneType",
})
DICT_CLASSES = frozenset({
    "collections.defaultdict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
})


def opaque_global(full: str) -> Any:
    """The stand-in for a pickle global `full`, or None where it is not one of these."""
    if full in DICT_CLASSES:
        return PlainDictClass(full)
    if full in OPAQUE_CLASSES or full.split(".", 1)[0] in OPAQUE_PACKAGES:
        return OpaqueClass(full)
    return None


class OpaqueClass:
    """A class a pickle names, never imported: calling it (REDUCE) or NEWOBJ on it makes an
    OpaqueValue."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> "OpaqueValue":
        return OpaqueValue(self.name, args)

    def new(self, args: tuple) -> "OpaqueValue":  # NEWOBJ
        return self(*args)

    def __setstate__(self, state: Any) -> None:
        raise TypeError(f"pickle tried to set state on the class {self.name}")

    def __repr__(self) -> str:
        return f"<class {self.name}, not loaded>"


class OpaqueValue:
    """An object of an OpaqueClass: its name, constructor arguments and state, as data."""

    __slots__ = ("name", "args", "state")

    def __init__(self, name: str, args: tuple) -> None:
        self.name, self.args, self.state = name, args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.name}, not loaded>"


class PlainDictClass:
    """A dict subclass a pickle names (Lightning's AttributeDict, defaultdict): what it builds is
    an empty dict, which the pickle then fills."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> dict:  # defaultdict(factory): the factory is not kept
        return {}

    def new(self, args: tuple) -> dict:  # NEWOBJ
        return self(*args)

    def __setstate__(self, state: Any) -> None:
        raise TypeError(f"pickle tried to set state on the class {self.name}")

    def __repr__(self) -> str:
        return f"<class {self.name}, read as dict>"
