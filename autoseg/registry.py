"""Name -> implementation registries for architectures, backbones and losses.

Everything that lists or validates names (the CLI, search-space YAML validation, the
leaderboard, the README model table, parametrised tests) reads these registries, so adding
an architecture is one decorated builder in one file plus one import line.

Lookups are case-insensitive. Unknown names raise `ConfigError` listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

from autoseg.env_flags import env_flag
from autoseg.errors import ConfigError


class Registry:
    """A case-insensitive mapping from a key to a registered entry.

    Args:
        kind: What the entries are, for error messages ("architecture", "loss").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._aliases: dict[str, tuple[str, dict]] = {}

    def add(self, name: str, entry: Any) -> None:
        key = name.lower()
        if key in self._entries or key in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice.")
        self._entries[key] = entry

    def add_alias(self, alias: str, target: str, **preset: Any) -> None:
        """Registers `alias` as `target` with some options preset."""
        key = alias.lower()
        if key in self._entries or key in self._aliases:
            raise ValueError(f"{self.kind} alias {alias!r} is registered twice.")
        self._aliases[key] = (target.lower(), dict(preset))

    def resolve(self, name: str) -> tuple[Any, dict]:
        """Returns `(entry, preset_options)` for a name or alias.

        Raises:
            ConfigError: the name is neither a key nor an alias.
        """
        if not isinstance(name, str):
            raise ConfigError(
                f"A {self.kind} name must be a string. Received: {name!r}. "
                f"Valid names: {', '.join(self.names())}."
            )
        key = name.lower()
        if key in self._aliases:
            target, preset = self._aliases[key]
            return self._entries[target], dict(preset)
        if key in self._entries:
            return self._entries[key], {}
        raise ConfigError(
            f"Unknown {self.kind} {name!r}. Valid names: {', '.join(self.names())}"
            + (f" (aliases: {', '.join(sorted(self._aliases))})" if self._aliases else "")
            + "."
        )

    def get(self, name: str) -> Any:
        return self.resolve(name)[0]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def aliases(self) -> dict[str, tuple[str, dict]]:
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name.lower() in self._entries or name.lower() in self._aliases
        )


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """What the registry knows of one architecture.

    Attributes:
        name: The canonical key, e.g. "unet".
        family: The family (file in `architectures/`) it belongs to.
        builder: `builder(num_classes, input_shape, **options) -> keras.Model`.
        backbones: Values the `backbone` option accepts (empty if it has none).
        defaults: Every option the builder takes, with its default: read from the builder's
            signature (every parameter after `num_classes` and `input_shape`).
        choices: For options with a finite set of values, those values (read when asked:
            see `option_choices`).
        option_choices: What `register_architecture` was given for `choices`: per option a
            tuple, or a function returning one, called each time the choices are read, so
            that a choice can list architectures registered later (pix2pix's generators).
        input_divisor: `input_divisor(options) -> int`: input height and width must be
            multiples of it.
        description: One line for `autoseg models` and the README.
    """

    name: str
    family: str
    builder: Callable[..., Any]
    backbones: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    option_choices: Mapping[str, tuple | Callable[[], tuple]] = dataclasses.field(
        default_factory=dict)
    input_divisor: Callable[[Mapping[str, Any]], int] = lambda options: 1
    description: str = ""

    @property
    def choices(self) -> dict[str, tuple]:
        """For options with a finite set of values, those values, as of now."""
        return {key: tuple(values() if callable(values) else values)
                for key, values in self.option_choices.items()}

    @property
    def user_backbones(self) -> tuple[str, ...]:
        """The backbones a user may choose: `backbones` less the test-only ones.

        What search spaces accept and `autoseg models` lists; `models.build` takes every
        one of `backbones`. `AUTOSEG_TEST_BACKBONES=1` lets test-only ones in (for tests).
        """
        if test_backbones_allowed():
            return self.backbones
        return tuple(name for name in self.backbones if not is_test_backbone(name))


ARCHITECTURES = Registry("architecture")
BACKBONES = Registry("backbone")
LOSSES = Registry("loss")

#: Set to 1 to let test-only backbones (`tiny`) into search spaces and `autoseg models`.
TEST_BACKBONES_ENV = "AUTOSEG_TEST_BACKBONES"


def is_test_backbone(name: str) -> bool:
    """Whether `name` is a backbone registered with `for_tests=True` (e.g. `tiny`)."""
    return name in BACKBONES and bool(BACKBONES.get(name)[1].get("for_tests"))


def test_backbones_allowed() -> bool:
    """Whether `AUTOSEG_TEST_BACKBONES` lets test-only backbones into user choices."""
    return env_flag(TEST_BACKBONES_ENV, default=False)


def register_architecture(
    name: str,
    *,
    family: str,
    backbones: tuple[str, ...] = (),
    choices: Mapping[str, tuple | Callable[[], tuple]] | None = None,
    input_divisor: Callable[[Mapping[str, Any]], int] | None = None,
    description: str = "",
):
    """Decorator registering a model builder under `name`.

    The builder is `builder(num_classes, input_shape, **options) -> keras.Model`; every option
    is a keyword parameter with its default, and those defaults are the architecture's
    (`ArchitectureSpec.defaults`), written once. A `choices` entry may be a function returning
    the values, read whenever the choices are (see `ArchitectureSpec.option_choices`).

    Raises:
        TypeError: the builder takes an option without a default, or `**kwargs`.

    Example:
    ```python
    @register_architecture("unet", family="unet", choices={"depth": (3, 4, 5)})
    def build_unet(num_classes, input_shape, depth=4): ...
    ```
    """

    def decorate(builder):
        ARCHITECTURES.add(
            name,
            ArchitectureSpec(
                name=name.lower(),
                family=family,
                builder=builder,
                backbones=tuple(backbones),
                defaults=builder_defaults(builder),
                option_choices=dict(choices or {}),
                input_divisor=input_divisor or (lambda options: 1),
                description=description,
            ),
        )
        return builder

    return decorate


def builder_defaults(builder: Callable[..., Any]) -> dict[str, Any]:
    """The options of an architecture builder and their defaults, from its signature."""
    parameters = list(inspect.signature(builder).parameters.values())[2:]  # num_classes, input_shape
    bad = [p.name for p in parameters
           if p.default is p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if bad:
        raise TypeError(
            f"{builder.__qualname__}: every option after (num_classes, input_shape) needs a "
            f"default, and no *args or **kwargs: {', '.join(bad)}."
        )
    return {p.name: p.default for p in parameters}


def register_architecture_alias(alias: str, target: str, **preset: Any) -> None:
    """Registers an alias (e.g. the original model table's `unet_resnet`)."""
    ARCHITECTURES.add_alias(alias, target, **preset)


def register_backbone(name: str, *, for_tests: bool = False, **info: Any):
    """Decorator registering a backbone builder.

    The builder is `builder(inputs, weights=None, **options) -> dict[int, tensor]`: the
    feature maps keyed by their stride relative to the input (1, 2, 4, 8, 16, 32).
    `info` may carry static facts such as `strides=(2, 4, 8, 16, 32)`.

    Args:
        name: The backbone's key.
        for_tests: A backbone for autoseg's own tests (fast, useless for real data): models
            build with it, but search spaces refuse it and `autoseg models` does not list
            it (`ArchitectureSpec.user_backbones`). Defaults to False.
        **info: Static facts, kept as the entry's info dict (with `for_tests`).
    """

    def decorate(builder):
        BACKBONES.add(name, (builder, {**info, "for_tests": for_tests}))
        return builder

    return decorate


def register_loss(name: str):
    """Decorator registering a loss factory `factory(num_classes, class_weights=None,
    ignore_index=255) -> keras.losses.Loss`."""

    def decorate(factory):
        LOSSES.add(name, factory)
        return factory

    return decorate
