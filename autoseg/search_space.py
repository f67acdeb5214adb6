"""Search spaces: YAML -> validated `SearchSpace`, checked before any trial starts.

Schema (every key optional except `models`; see search_spaces/default.yaml):

```yaml
models:                  # model_name choices; each maps option -> values
  unet: {depth: [3, 4], filters: [16, 32], backbone: none}
  deeplabv3plus: {backbone: [resnet50], output_stride: 16}
input_size: [128, 192]   # square sizes, "HxW" strings, or "auto" (from the dataset)
policy: resize           # resize | crop | auto (from the dataset's image sizes)
crop_scale: [0.5]        # photo scale before cropping, with the crop policy
rare_crops: [0.0, 0.33]  # share of training crops over a rare-class pixel (crop policy)
batch_size: [4, 8, 16]   # candidates; those over the memory budget are never used
loss: [ce, ce_dice]      # or "auto" (weighted losses offered on imbalanced data)
aug_strength: [0.0, 0.3, 0.6]
weight_ema: [0, 2]       # average the weights over this many epochs (0: off)
rebalance: auto          # auto: weigh classes up mid-training when the scores show missed ones
learning_rate: {min: 0.0003, max: 0.003, sampling: log}
max_epochs: 30
```

A value is a list (a choice), a scalar (fixed), or a `{min, max, [step], [sampling]}`
range. Unknown keys, wrong types, empty choices and unknown model, backbone, option or
loss names raise `ConfigError` naming the file, the key and the valid values.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from autoseg.errors import ConfigError

GLOBAL_KEYS = (
    "input_size",
    "policy",
    "crop_scale",
    "rare_crops",
    "batch_size",
    "loss",
    "aug_strength",
    "learning_rate",
    "weight_ema",
    "rebalance",
)
TOP_LEVEL_KEYS = ("description", "models", "max_epochs") + GLOBAL_KEYS
POLICIES = ("resize", "crop")
#: `rebalance` values (`autoseg.rebalance`): decide from a trial's per-class scores, or never.
REBALANCE_MODES = ("auto", "off")
RANGE_KEYS = {"min", "max", "step", "sampling"}

DEFAULTS: dict[str, Any] = {
    "input_size": "auto",
    "policy": "auto",
    "crop_scale": [0.5],
    "rare_crops": 0.0,
    "batch_size": [2, 4, 8, 16],
    "loss": "auto",
    "aug_strength": [0.0, 0.25, 0.5],
    "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
    "weight_ema": 0,
    "rebalance": "auto",
    "max_epochs": 30,
}


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric range hyperparameter: `hp.Int` if both ends are ints, else `hp.Float`."""

    min: float
    max: float
    step: float | None = None
    sampling: str = "linear"

    @property
    def is_int(self) -> bool:
        return isinstance(self.min, int) and isinstance(self.max, int) and (
            self.step is None or isinstance(self.step, int)
        )

    def samples(self) -> list:
        """A few representative values (the ends and the middle), for pre-flight checks."""
        mid = (
            math.sqrt(self.min * self.max)
            if self.sampling == "log" and self.min > 0
            else (self.min + self.max) / 2
        )
        values = [self.min, int(round(mid)) if self.is_int else mid, self.max]
        return sorted(set(values))


def as_values(value: Any) -> list:
    """The candidate values of a choice, fixed value or range (ranges: ends and middle)."""
    if isinstance(value, Range):
        return value.samples()
    if isinstance(value, list):
        return list(value)
    return [value]


@dataclasses.dataclass
class SearchSpace:
    """A validated search space.

    Attributes:
        models: `model_name -> {option: list | scalar | Range}`.
        params: The global hyperparameters (`GLOBAL_KEYS`), each a list, scalar or Range;
            "auto" values are resolved by `resolve_auto`.
        max_epochs: Epochs per trial at most (Hyperband's `max_epochs`).
        source: Where the space came from, for messages.
    """

    models: dict[str, dict[str, Any]]
    params: dict[str, Any]
    max_epochs: int
    source: str = "<dict>"
    description: str = ""

    def to_yaml_dict(self) -> dict[str, Any]:
        def plain(v):
            if isinstance(v, Range):
                d = {"min": v.min, "max": v.max}
                if v.step is not None:
                    d["step"] = v.step
                if v.sampling != "linear":
                    d["sampling"] = v.sampling
                return d
            return v

        data: dict[str, Any] = {}
        if self.description:
            data["description"] = self.description
        data["models"] = {m: {k: plain(v) for k, v in o.items()} for m, o in self.models.items()}
        data.update({k: plain(v) for k, v in self.params.items()})
        data["max_epochs"] = self.max_epochs
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_yaml_dict(), sort_keys=False, default_flow_style=None)

    def input_sizes(self) -> list[tuple[int, int]]:
        return [parse_input_size(v, self.source) for v in as_values(self.params["input_size"])]


def bundled_space_path(name: str) -> Path | None:
    """The path of a bundled space (`default`, `quick`, `ci`), installed or in a checkout."""
    here = Path(__file__).resolve().parent
    installed = Path(sys.prefix) / "share" / "autoseg" / "search_spaces"
    for folder in (here.parent / "search_spaces", installed):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def load_space(space: str | Path | dict | None = None) -> SearchSpace:
    """Loads and validates a search space.

    Args:
        space: A YAML path, the name of a bundled space (`default`, `quick`, `ci`), a dict
            in the YAML schema, or None for `default`.

    Returns:
        The validated `SearchSpace` ("auto" values still unresolved).

    Raises:
        ConfigError: the file is missing or invalid; the message names the key.
    """
    if isinstance(space, dict):
        return validate_space(space, "<dict>")
    name = str(space or "default")
    path = Path(name)
    if not path.is_file():
        bundled = bundled_space_path(name)
        if bundled is None:
            raise ConfigError(
                f"Search space {name!r} is neither a file nor a bundled space "
                "(default, quick, ci). Pass --space PATH/TO/space.yaml."
            )
        path = bundled
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return validate_space(data, str(path))


def validate_space(data: Any, source: str) -> SearchSpace:
    """Validates a space given as the parsed YAML mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a search space must be a mapping with a `models` key.")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}. Valid keys: {', '.join(TOP_LEVEL_KEYS)}."
        )
    _ensure_registered()
    models = _validate_models(data.get("models"), source)

    params: dict[str, Any] = {}
    for key in GLOBAL_KEYS:
        value = data.get(key, DEFAULTS[key])
        params[key] = _parse_value(value, key, source)
    _check_globals(params, source)
    max_epochs = data.get("max_epochs", DEFAULTS["max_epochs"])
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
        raise ConfigError(f"{source}: max_epochs must be a positive integer. Received: {max_epochs!r}.")
    space = SearchSpace(
        models=models,
        params=params,
        max_epochs=max_epochs,
        source=source,
        description=str(data.get("description", "")),
    )
    if params["input_size"] != "auto":
        check_input_sizes(space)
    return space


def _validate_models(models_raw: Any, source: str) -> dict[str, dict[str, Any]]:
    """The `models` mapping, keyed by canonical architecture name (aliases resolved)."""
    from autoseg import registry

    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError(
            f"{source}: `models` must map at least one model name to its options. "
            f"Valid model names: {', '.join(registry.ARCHITECTURES.names())}."
        )
    models: dict[str, dict[str, Any]] = {}
    for name, options in models_raw.items():
        key = f"models.{name}"
        try:
            spec, preset = registry.ARCHITECTURES.resolve(str(name))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: {key} must map option names to values. Received: {options!r}.")
        resolved = _model_options(spec, preset, options, key, source)
        if spec.name in models:
            raise ConfigError(f"{source}: model {spec.name!r} is listed twice (aliases count).")
        models[spec.name] = resolved
    return models


def _model_options(
    spec, preset: dict[str, Any], options: dict, key: str, source: str
) -> dict[str, Any]:
    """One model's options over its preset, each a known option with admissible values."""
    resolved = {k: v for k, v in preset.items()}
    for option, value in options.items():
        if option not in spec.defaults:
            raise ConfigError(
                f"{source}: {key}.{option} is not an option of {spec.name}. "
                f"Valid options: {', '.join(sorted(spec.defaults)) or '(none)'}."
            )
        resolved[option] = _parse_value(value, f"{key}.{option}", source, allow_dict=True)
        valid = _valid_values(spec, option)
        if valid is not None:
            for v in as_values(resolved[option]):
                if _norm(v) not in [_norm(x) for x in valid]:
                    raise ConfigError(
                        f"{source}: {key}.{option} has {v!r}; valid values for "
                        f"{spec.name}: {', '.join(map(str, valid))}."
                    )
    return resolved


def _ensure_registered() -> None:
    import autoseg.architectures  # noqa: F401  (registers every family)
    import autoseg.losses  # noqa: F401  (registers every loss)


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _valid_values(spec, option: str) -> list | None:
    if option == "backbone" and spec.backbones:
        return list(spec.user_backbones)
    if option in spec.choices:
        return list(spec.choices[option])
    return None


def _parse_value(value: Any, key: str, source: str, allow_dict: bool = False) -> Any:
    if isinstance(value, dict) and set(value) <= RANGE_KEYS and {"min", "max"} <= set(value):
        lo, hi = value["min"], value["max"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise ConfigError(f"{source}: {key} range needs numeric min and max. Received: {value!r}.")
        if lo > hi:
            raise ConfigError(f"{source}: {key} has min {lo} > max {hi}.")
        sampling = value.get("sampling", "linear")
        if sampling not in ("linear", "log", "reverse_log"):
            raise ConfigError(
                f"{source}: {key}.sampling must be linear, log or reverse_log. Received: {sampling!r}."
            )
        if sampling == "log" and lo <= 0:
            raise ConfigError(f"{source}: {key} with log sampling needs min > 0. Received: {lo}.")
        return Range(lo, hi, value.get("step"), sampling)
    if isinstance(value, dict):
        if allow_dict:  # a fixed structured option, e.g. pix2pix generator_options
            return value
        raise ConfigError(
            f"{source}: {key} must be a list of choices, a single value or a range "
            f"{{min, max, step, sampling}}. Received: {value!r}."
        )
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{source}: {key} is an empty list; give at least one value.")
        kinds = {type(v) for v in value}
        if any(isinstance(v, (list, dict)) for v in value) and key != "input_size":
            raise ConfigError(f"{source}: {key} choices must be plain values. Received: {value!r}.")
        if len(kinds - {int, float}) > 1 or (kinds & {int, float} and kinds - {int, float}):
            raise ConfigError(f"{source}: {key} mixes value types: {value!r}.")
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{source}: {key} lists a value twice: {value!r}.")
        return list(value)
    if value is None:
        raise ConfigError(f"{source}: {key} is empty; give a value, a list or a range.")
    return value


def _check_globals(params: dict[str, Any], source: str) -> None:
    from autoseg import registry

    losses = params["loss"]
    if losses != "auto":
        for loss in as_values(losses):
            if not isinstance(loss, str) or loss not in registry.LOSSES:
                raise ConfigError(
                    f"{source}: loss {loss!r} is unknown. Valid losses: "
                    f"{', '.join(registry.LOSSES.names())} (or auto)."
                )
    policy = params["policy"]
    if policy != "auto":
        for p in as_values(policy):
            if p not in POLICIES:
                raise ConfigError(
                    f"{source}: policy {p!r} is unknown. Valid: {', '.join(POLICIES)} (or auto)."
                )
    for mode in as_values(params["rebalance"]):
        if mode not in REBALANCE_MODES:
            raise ConfigError(f"{source}: rebalance {mode!r} is unknown. "
                              f"Valid: {', '.join(REBALANCE_MODES)}.")
    for v in as_values(params["batch_size"]):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{source}: batch_size values must be positive integers. Received: {v!r}.")
    for key, lo, hi in (("aug_strength", 0.0, 1.0), ("crop_scale", 1e-3, 1.0), ("rare_crops", 0.0, 1.0),
                        ("learning_rate", 1e-7, 1.0), ("weight_ema", 0.0, 100.0)):
        for v in as_values(params[key]):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(
                    f"{source}: {key} values must be numbers in [{lo:g}, {hi:g}]. Received: {v!r}."
                )
    if params["input_size"] != "auto":
        for v in as_values(params["input_size"]):
            parse_input_size(v, source)


def parse_input_size(value: Any, source: str = "input_size") -> tuple[int, int]:
    """`192 -> (192, 192)`, `"384x288"` (width x height) -> (288, 384) as (H, W)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 16:
        return (value, value)
    if isinstance(value, str) and "x" in value.lower():
        try:
            w, h = (int(p) for p in value.lower().split("x"))
        except ValueError:
            pass
        else:
            if w >= 16 and h >= 16:
                return (h, w)
    raise ConfigError(
        f"{source}: input_size {value!r} is not valid. Use an integer >= 16 (square) or "
        "'WIDTHxHEIGHT' such as '384x288'."
    )


def hyperparameter_values(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameter values without KerasTuner's `tuner/*` bookkeeping."""
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def trial_model_config(values: dict[str, Any]) -> dict[str, Any]:
    """What a trial's hyperparameter values say about its model and input handling.

    Returns:
        `{"model_name", "options", "input_size" (H, W), "policy", "crop_scale"}` — enough to
        rebuild the trained architecture (export, predict) without the search space.
    """
    model_name = values["model_name"]
    prefix = f"{model_name}/"
    options = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    policy = values.get("policy", "resize")
    return {
        "model_name": model_name,
        "options": options,
        "input_size": parse_input_size(values["input_size"]),
        "policy": policy,
        "crop_scale": float(values.get("crop_scale", 1.0)) if policy == "crop" else 1.0,
    }


def format_input_size(size: tuple[int, int]) -> int | str:
    h, w = size
    return h if h == w else f"{w}x{h}"


def model_option_grid(options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of an option dict's candidate values (ranges: ends and middle)."""
    keys = list(options)
    values = [as_values(options[k]) if not isinstance(options[k], dict) else [options[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def check_input_sizes(space: SearchSpace) -> None:
    """Every input size must suit every model configuration (its stride divisor).

    Raises:
        ConfigError: naming the model, options, size and the nearest valid sizes.
    """
    from autoseg import registry

    for name, options in space.models.items():
        spec = registry.ARCHITECTURES.get(name)
        for combo in model_option_grid(options):
            merged = {**spec.defaults, **combo}
            divisor = int(spec.input_divisor(merged))
            for h, w in space.input_sizes():
                for side in (h, w):
                    if side % divisor:
                        lower = side // divisor * divisor
                        raise ConfigError(
                            f"{space.source}: input_size {format_input_size((h, w))} does not suit "
                            f"{name} with {combo or 'its defaults'}: sides must be multiples of "
                            f"{divisor}. Nearest valid sizes: {max(lower, divisor)}, {lower + divisor}."
                        )


def resolve_auto(space: SearchSpace, fingerprint: dict | None) -> SearchSpace:
    """Replaces "auto" values by choices adapted to a dataset fingerprint.

    - input_size: square sizes that are multiples of every model's divisor, up to the
      median image's short side (several, from coarse to fine).
    - policy: `crop` when the median photo's short side exceeds 2x the largest input size
      (thin plants vanish when a large photo is shrunk that much), else `resize`.
    - loss: `ce` and `ce_dice`, plus `weighted_ce_dice`, `weighted_ce` and `focal` when the
      rarest class covers under 5% of the pixels.
    """
    from autoseg import registry

    params = dict(space.params)
    fp = fingerprint or {}
    sizes = fp.get("image_size") or fp.get("image_sizes") or {}
    median = sizes.get("median") if isinstance(sizes, dict) else None
    short_side = min(median) if median else 256
    if params["input_size"] == "auto":
        divisor = 1
        for name, options in space.models.items():
            spec = registry.ARCHITECTURES.get(name)
            for combo in model_option_grid(options):
                divisor = math.lcm(divisor, int(spec.input_divisor({**spec.defaults, **combo})))
        top = max(divisor, min(256, short_side) // divisor * divisor)
        candidates = sorted({max(divisor, top // 2 // divisor * divisor), top})
        params["input_size"] = candidates if len(candidates) > 1 else candidates[0]
    if params["policy"] == "auto":
        largest = max(max(s) for s in SearchSpace(space.models, params, 1).input_sizes())
        params["policy"] = "crop" if short_side > 2 * largest else "resize"
    if params["loss"] == "auto":
        fractions = [v for v in (fp.get("class_pixel_fraction") or {}).values() if v is not None]
        imbalanced = bool(fractions) and min(fractions) < 0.05
        params["loss"] = (["ce", "ce_dice", "weighted_ce_dice", "weighted_ce", "focal"] if imbalanced
                          else ["ce", "ce_dice"])
    resolved = dataclasses.replace(space, params=params)
    check_input_sizes(resolved)
    return resolved
