"""One definition per flag: a command-line option is a dataclass field, its parser is generated.

A config dataclass marks the fields a user may set with `flag(...)`, which keeps Megatron's flag
name, the help text, choices and aliases in the field's metadata beside its default and type:

    @dataclass(frozen=True)
    class TokenizerConfig:
        tokenizer_type: str | None = flag(None, choices=TOKENIZER_TYPES, help="...")

Every CLI that uses the config calls `add_flags(parser, TokenizerConfig)` and builds the config with
`from_args(TokenizerConfig, namespace)`, so a new field becomes a flag of every such CLI with no other
edit (tests/test_cli_flags.py adds one and checks). How a field becomes an argparse option:

- name `--field-name` (or `name=`), `aliases=` extra names; `dest` is always the field name;
- type from the annotation (`X | None` -> X; `list[X]` -> nargs="*");
- default from the field (`unset=True` in add_flags: every default None, for flags that override a
  preset only when given); a field without a default gets the CLI default None (or `required`);
- bool: False -> `--name` (store_true); True -> `--no-name` (store_false); `unset` -> `--name/--no-name`.

Validation stays where the config is built (its `__post_init__` / `validate`), once, naming the flag.
Shared groups used by several CLIs live here: the checkpoint step and the --verify block.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Iterable

_KEY = "flag"
_UNSET = object()  # FlagSpec.cli_default not given


@dataclass(frozen=True)
class FlagSpec:
    help: str | None = None
    name: str | None = None  # default: --field-name
    aliases: tuple[str, ...] = ()
    choices: tuple | None = None
    metavar: str | None = None
    nargs: str | int | None = None
    action: str | None = None  # "append": a repeatable flag (a list field)
    group: str | None = None  # the --help section it is listed in (when added to a parser, not a group)
    required: bool = False
    cli_default: Any = _UNSET  # the parser's default where it differs: a required field's, or None to see "given"


def flag(default: Any = MISSING, *, default_factory: Any = MISSING, help: str | None = None, name: str | None = None,
         aliases: Iterable[str] = (), choices: Iterable | None = None, metavar: str | None = None,
         nargs: str | int | None = None, action: str | None = None, group: str | None = None,
         required: bool = False, cli_default: Any = _UNSET) -> Any:
    """A dataclass field that is also a command-line flag (see the module docstring)."""
    spec = FlagSpec(help=help, name=name, aliases=tuple(aliases), choices=tuple(choices) if choices else None,
                    metavar=metavar, nargs=nargs, action=action, group=group, required=required,
                    cli_default=cli_default)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass (or instance) that are flags, in definition order."""
    return [f for f in dataclasses.fields(cls) if _KEY in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
    """The flag's main name as the user types it, e.g. '--num-layers' (a True bool's is its --no- form)."""
    spec = field.metadata[_KEY]
    if spec.name:
        return spec.name
    dashed = "--" + field.name.replace("_", "-")
    return "--no-" + dashed[2:] if field.default is True else dashed


def flag_names(*classes) -> dict[str, str]:
    """{field name: flag name} over the classes: for messages that name fields, rewritten to name flags."""
    return {f.name: flag_name(f) for cls in classes for f in flag_fields(cls)}


def _base_type(annotation) -> tuple[type, bool]:
    """(element type, is a list) of an annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple, typing.List, typing.Tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_flags(parser, cls, *, only: Iterable[str] | None = None, skip: Iterable[str] = (), unset: bool = False,
              required: Iterable[str] = (), help: dict[str, str] | None = None, group: str | None = None) -> None:
    """Add cls's flag fields to `parser` (a parser or an argument group).

    `only`/`skip` choose fields by name; `unset` makes every default None (the flag overrides only when
    given); `required` makes the named flags required in this CLI; `help` replaces a field's help here;
    `group` is the --help section of the fields that name none (on a parser).
    """
    hints = typing.get_type_hints(cls)
    chosen = set(only) if only is not None else None
    for field in flag_fields(cls):
        if (chosen is not None and field.name not in chosen) or field.name in skip:
            continue
        spec: FlagSpec = field.metadata[_KEY]
        kind, is_list = _base_type(hints[field.name])
        kwargs: dict[str, Any] = dict(dest=field.name, help=(help or {}).get(field.name, spec.help))
        names = [flag_name(field), *spec.aliases]
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        if spec.cli_default is not _UNSET:
            default = spec.cli_default
        elif default is MISSING:
            default = None
        elif is_list and isinstance(default, tuple):
            default = list(default)  # what argparse itself gives for nargs
        target = _section(parser, spec.group or group)
        if kind is bool and not is_list:
            if unset:
                kwargs.update(action=argparse.BooleanOptionalAction, default=None)
            elif default is True:
                kwargs.update(action="store_false", default=True)
            else:
                kwargs.update(action="store_true", default=bool(default))
            target.add_argument(*names, **kwargs)
            continue
        kwargs.update(type=kind, default=None if unset else default)
        if spec.action:
            kwargs["action"] = spec.action
        elif is_list:
            kwargs["nargs"] = spec.nargs or "*"
        elif spec.nargs is not None:
            kwargs["nargs"] = spec.nargs
        for key in ("choices", "metavar"):
            if getattr(spec, key) is not None:
                kwargs[key] = getattr(spec, key)
        if spec.required or field.name in required:
            kwargs["required"] = True
        if kind is str and kwargs["default"] is None:
            kwargs.pop("type")  # argparse's own str: the help shows no type
        target.add_argument(*names, **kwargs)


def _section(parser, title: str | None):
    """The argument group titled `title` of a parser (made on first use); a group or no title: `parser`."""
    if title is None or not isinstance(parser, argparse.ArgumentParser):
        return parser
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def flag_values(cls, namespace: argparse.Namespace, *, given_only: bool = False) -> dict[str, Any]:
    """{field: value} of cls's flags found in the namespace (`given_only`: leave out None values)."""
    values = {f.name: getattr(namespace, f.name) for f in flag_fields(cls) if hasattr(namespace, f.name)}
    if given_only:
        values = {k: v for k, v in values.items() if v is not None}
    for f in flag_fields(cls):  # parsed lists become the field's own container type
        if isinstance(values.get(f.name), list) and isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    return values


def from_args(cls, namespace: argparse.Namespace, **extra):
    """Build cls from parsed flags (its __post_init__ / validate checks them); `extra` sets the rest."""
    return cls(**{**flag_values(cls, namespace), **extra})


# Shared groups: the same flags in several CLIs, defined once.

@dataclass(frozen=True)
class CheckpointStep:
    """Which iteration of a checkpoint root to read: Megatron's --ckpt-step (--iteration is the old name)."""

    ckpt_step: int | None = flag(None, aliases=("--iteration",),
                                 help="load this iteration of --load instead of the one its latest marker names")


@dataclass(frozen=True)
class VerifyArgs:
    """--verify / --tolerance of the export and growth CLIs: compare logits with the source model's."""

    verify: bool = flag(False, help="compare the result's logits with the source model's on a probe batch; "
                                    "exit 1 above --tolerance")
    tolerance: float = flag(1e-5, help="largest max abs logit difference accepted by --verify")
    verify_json: str | None = flag(None, metavar="PATH", help="with --verify: write its figures (max abs logit "
                                                             "diff, tolerance, verdict) as JSON here too")

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:  # NaN too
            raise ValueError(f"--tolerance {self.tolerance:g} must be >= 0")
        if self.verify_json and not self.verify:
            raise ValueError("--verify-json needs --verify")

    def judge(self, diff: float, what: str, log=lambda line: print(line, flush=True),
              figures: dict | None = None) -> str | None:
        """Log `max abs logit diff: <diff>` (for people), write it with `figures` to --verify-json (for
        scripts: the demo reads that, never the log); None when it passes, else the one-line reason
        (`what` differ by ...)."""
        log(f"max abs logit diff: {diff:.3e}")
        if self.verify_json:
            from flm_ext.fileio import atomic_write_json

            atomic_write_json(self.verify_json, {**(figures or {}), "max_abs_logit_diff": diff,
                                                 "tolerance": self.tolerance, "within_tolerance": diff <= self.tolerance})
        return None if diff <= self.tolerance else f"{what} differ by {diff:.3e} > --tolerance {self.tolerance:g}"


__all__ = ["flag", "flag_fields", "flag_name", "flag_names", "add_flags", "flag_values", "from_args",
           "CheckpointStep", "VerifyArgs"]
