"""Search space for ``bonefrac tune``: a YAML file of config field paths and their ranges.

```yaml
params:
  train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
  data.batch_size: {type: categorical, choices: [16, 32]}
  train.warmup_epochs: {type: int, low: 0, high: 3}
  model:                       # a section: each choice sets several fields together
    type: categorical
    choices:
      - {name: efficientnet_lite0, pretrained: imagenet}
      - {name: simple_cnn, pretrained: none}
```

Every path must name a field of :class:`~bonefrac.config.ExperimentConfig`; bounds and choices
are checked by building a config with them, all before any trial starts
(:meth:`SearchSpace.validate`). A typo is a :class:`~bonefrac.errors.ConfigError` naming the
space file, the entry and the closest valid field.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from bonefrac.config import ExperimentConfig, build_config, parse_overrides, read_yaml_mapping
from bonefrac.errors import BonefracError, ConfigError

Scalar = bool | int | float | str | None


class ParamSpec(BaseModel):
    """One searched field: ``float``/``int`` over [low, high] or ``categorical`` over choices."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None]
            if self.log:
                extra.append("log")
            if extra:
                raise ValueError(f"categorical takes only 'choices', not {', '.join(extra)}")
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            keys = [json.dumps(c, sort_keys=True, default=str) for c in self.choices]
            if len(set(keys)) != len(keys):
                raise ValueError("'choices' has duplicates")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high (and log or step), not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if isinstance(self.low, bool) or isinstance(self.high, bool):
            raise ValueError("'low' and 'high' must be numbers")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("'low' and 'high' must be finite")
        if self.low >= self.high:
            raise ValueError(
                f"low ({self.low}) must be below high ({self.high}); "
                "to fix a value use --set instead of the space"
            )
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined")
        if self.type == "int":
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and float(value) != int(value):
                    raise ValueError(f"int needs a whole-number '{key}', got {value}")
        return self


class SearchSpace(BaseModel):
    """The whole space file; ``params`` maps config field paths to :class:`ParamSpec`."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, ParamSpec] = Field(min_length=1)
    _source: str = PrivateAttr("search space")

    @property
    def source(self) -> str:
        """The space file (for messages)."""
        return self._source

    # ----------------------------------------------------------------- sampling
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial for one value per entry: ``{path: value}``."""
        values: dict[str, Any] = {}
        for path, spec in self.params.items():
            if spec.type == "float":
                values[path] = trial.suggest_float(
                    path, float(spec.low), float(spec.high), log=spec.log, step=spec.step
                )
            elif spec.type == "int":
                values[path] = trial.suggest_int(
                    path, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
                )
            else:
                labels = choice_labels(spec)
                label = trial.suggest_categorical(path, labels)
                values[path] = spec.choices[labels.index(label)]  # type: ignore[index]
        return values

    def apply(
        self, base: ExperimentConfig, values: dict[str, Any], source: str | None = None
    ) -> ExperimentConfig:
        """``base`` with ``values`` ({path: value}) set; invalid values are a ConfigError."""
        return apply_values(base, values, source or self.source)

    # --------------------------------------------------------------- validation
    def validate_against(
        self, base: ExperimentConfig, fixed: list[str] | None = None, check_models: bool = True
    ) -> None:
        """Check every entry against ``base`` before any trial starts (raises ConfigError).

        - each path names a config field (sections only with mapping choices);
        - no two entries (or an entry and a ``--set`` override in ``fixed``) set the same field;
        - low, high, an interior point and every choice each give a valid config;
        - with ``check_models``, every model the space can reach is built once (unknown name,
          missing weights, ImageNet weights for a model without them).
        """
        owners: dict[str, str] = {}
        for key in _leaf_paths(parse_overrides(fixed)):
            owners[key] = "--set"
        for path, spec in self.params.items():
            kind = _field_kind(path, self.source)
            if path == "tune" or path.startswith("tune."):
                raise ConfigError(
                    f"{self.source}: {path}: tune.* settings describe the study; "
                    "set them with --set, not in the search space"
                )
            if kind == "section":
                if spec.type != "categorical" or not all(isinstance(c, dict) for c in spec.choices):
                    raise ConfigError(
                        f"{self.source}: {path} is a section, not a field: name a field "
                        f"(e.g. {path}.{_first_field(path)}) or give categorical choices that "
                        "are mappings of its fields"
                    )
                leaves = sorted({f"{path}.{k}" for c in spec.choices for k in _leaf_paths(c)})
                for leaf in leaves:
                    _field_kind(leaf, self.source, must_be_leaf=True)
            else:
                if spec.type == "categorical":
                    bad = [c for c in spec.choices if not isinstance(c, Scalar)]  # type: ignore[arg-type, misc]
                    if bad:
                        raise ConfigError(
                            f"{self.source}: {path}: choices must be plain values "
                            f"(number, string, bool, null), got {bad[0]!r}"
                        )
                leaves = [path]
            for leaf in leaves:
                if leaf in owners:
                    raise ConfigError(
                        f"{self.source}: {leaf} is set both by {owners[leaf]} and by entry "
                        f"{path!r}; keep only one"
                    )
                owners[leaf] = repr(path)

        configs = []
        for path, spec in self.params.items():
            for value in _probe_values(spec):
                configs.append(
                    apply_values(base, {path: value}, f"{self.source}: {path}={value!r}")
                )
        if check_models:
            _check_models(configs, self.source)


def choice_labels(spec: ParamSpec) -> list[Any]:
    """Optuna-storable labels: plain choices as they are, mappings as compact JSON strings."""
    return [
        json.dumps(c, sort_keys=True, separators=(",", ":")) if isinstance(c, dict) else c
        for c in spec.choices or []
    ]


def load_space(path: str | Path) -> SearchSpace:
    """Read and check the shape of a space YAML (field paths are checked by ``validate``)."""
    path = Path(path)
    raw = read_yaml_mapping(
        path,
        "search space file not found (see configs/space.yaml)",
        "a mapping with a 'params' section",
    )
    return parse_space(raw, str(path))


def parse_space(raw: dict[str, Any], source: str = "search space") -> SearchSpace:
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] == "params" and len(loc) > 1:
                loc = loc[1:]
                if len(loc) > 1 and loc[1] in ("float", "int", "categorical"):
                    loc.pop(1)  # pydantic's union tag, not a key the user wrote
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{': '.join(loc)}: {msg}" if loc else msg)
        raise ConfigError(f"{source}: " + "; ".join(problems)) from exc
    space._source = source
    return space


def apply_values(base: ExperimentConfig, values: dict[str, Any], source: str) -> ExperimentConfig:
    """A new config: ``base`` with each dotted path set (mappings merge into sections)."""
    raw = base.model_dump(mode="json")
    for path, value in values.items():
        parts = path.split(".")
        node = raw
        for part in parts[:-1]:
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = {**node[parts[-1]], **value}
        else:
            node[parts[-1]] = value
    return build_config(raw, source)


# ---------------------------------------------------------------------------- helpers


def _section_model(parts: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in parts:
        field = model.model_fields.get(part)
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _field_kind(path: str, source: str, must_be_leaf: bool = False) -> str:
    """``"leaf"`` or ``"section"``; unknown paths are a ConfigError with a suggestion."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ConfigError(f"{source}: {path!r} is not a field path (e.g. train.lr)")
    model: type[BaseModel] = ExperimentConfig
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            prefix = ".".join(parts[:i])
            names = list(model.model_fields)
            close = difflib.get_close_matches(part, names, n=1)
            where = f"section {prefix!r}" if prefix else "the config"
            hint = f"did you mean {'.'.join([*parts[:i], close[0]])!r}? " if close else ""
            raise ConfigError(
                f"{source}: unknown field {path!r}: {where} has no {part!r}; {hint}"
                f"valid: {', '.join(names)}"
            )
        ann = field.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        if i == len(parts) - 1:
            if is_section and must_be_leaf:
                raise ConfigError(f"{source}: {path} is a section; name one of its fields")
            return "section" if is_section else "leaf"
        if not is_section:
            raise ConfigError(
                f"{source}: unknown field {path!r}: {'.'.join(parts[: i + 1])} is a value, "
                "not a section"
            )
        model = ann
    raise AssertionError("unreachable")


def _first_field(path: str) -> str:
    model = _section_model(path.split("."))
    return next(iter(model.model_fields)) if model is not None else "field"


def _leaf_paths(nested: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in nested.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out += _leaf_paths(value, full)
        else:
            out.append(full)
    return out


def _probe_values(spec: ParamSpec) -> list[Any]:
    """Values whose configs must all be valid: each choice, or low/high and an interior point."""
    if spec.type == "categorical":
        return list(spec.choices or [])
    low, high = spec.low, spec.high
    if spec.type == "int":
        return [int(low), int(high)]  # type: ignore[arg-type]
    if spec.step is not None:
        return [float(low), float(high)]  # type: ignore[arg-type]
    if spec.log:
        mid = math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low)))  # type: ignore[arg-type]
    else:
        mid = low + 0.37 * (high - low)  # type: ignore[operator]
    # a non-integral interior point: catches a float range on an int field
    return [float(low), float(high), mid]  # type: ignore[arg-type]


def _check_models(configs: list[ExperimentConfig], source: str) -> None:
    from bonefrac.models.registry import build_model

    seen = set()
    for cfg in configs:
        m = cfg.model
        key = (m.name, m.pretrained, m.weights_path)
        if key in seen:
            continue
        seen.add(key)
        try:
            build_model(m.name, pretrained=m.pretrained, weights_path=m.weights_path)
        except BonefracError as exc:
            raise ConfigError(
                f"{source}: model {m.name!r} (pretrained={m.pretrained}) cannot be built: {exc}"
            ) from exc
