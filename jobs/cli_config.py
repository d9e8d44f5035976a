"""`--config FILE`: a job's settings from a YAML mapping keyed by its flags' names, the command line on top.

A job opts in with `add_config_arg`; `Commands` (the sub-command action) reads the file after the command's
flags are parsed, so a flag given on the command line wins, and checks the required flags afterwards.
"""

from __future__ import annotations

import argparse

from jobs.cli_common import CLIError

GLOBAL_DESTS = {"help", "verbose", "log_level", "log_json", "json", "config_file"}  # never keys of --config


def add_config_arg(p: argparse.ArgumentParser, keys: dict[str, str] | None = None, extras: tuple = ()) -> None:
    """--config FILE for a job. The file's keys are the command's flags (`encode_batch` or `encode-batch`);
    `keys` maps the job config's own field names onto flags (max_duration_s -> max_duration); `extras` are
    fields of the job's config with no flag, passed to it as they are (see `jobs.cli_common.job_flags`)."""
    p.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="YAML mapping of this command's settings, keyed by flag name (e.g. encode_batch: 16); "
        "flags given on the command line win; unknown keys are refused",
    )
    p.set_defaults(config_keys=keys or {}, config_extras=tuple(extras), config_extra={})


def config_required(p: argparse.ArgumentParser) -> None:
    """A job with --config may take its required flags from the file: argparse stops requiring them and
    `Commands` checks them once the file is read."""
    required = []
    for action in p._actions:
        if action.required and action.option_strings:
            action.required = False
            action.help = f"{action.help} (required: here or in --config)"
            required.append((action.dest, action.option_strings[0]))
    p.set_defaults(required_flags=required)


class Commands(argparse._SubParsersAction):
    """The sub-commands. After a command's flags are parsed: which flags the command line gave (`given`), the
    --config file filling in the others, then the required flags checked (on the command line or in the file)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        command = self._name_parser_map[values[0]]
        namespace.given = given_dests(command, values[1:])
        if getattr(namespace, "config_file", None):
            apply_config_file(command, namespace)
        flags = command.get_default("required_flags") or ()
        missing = [flag for dest, flag in flags if getattr(namespace, dest, None) is None]
        if missing:
            command.error(f"the following arguments are required: {', '.join(missing)}")


def given_dests(command: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the command line set: `argv` parsed again with no defaults (so a flag given with its
    default value counts as given)."""
    saved = [(action, action.default) for action in command._actions]
    saved_defaults, command._defaults = command._defaults, {}
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(command.parse_known_args(argv, None)[0]))
    finally:
        for action, default in saved:
            action.default = default
        command._defaults = saved_defaults


def read_config_file(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise CLIError(f"--config {path}: no such file") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CLIError(f"--config {path}: not valid YAML ({getattr(err, 'problem', None) or err}{where})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CLIError(f"--config {path}: must hold a mapping of settings (flag: value)")
    return values


def apply_config_file(command: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    """Set the flags the command line did not give from the --config file; refuse keys that are not flags."""
    import difflib

    path = namespace.config_file
    values = read_config_file(path)
    actions = {a.dest: a for a in command._actions if a.option_strings and a.dest not in GLOBAL_DESTS}
    keys, extras = command.get_default("config_keys") or {}, command.get_default("config_extras") or ()
    known = [*actions, *keys, *extras]
    unknown = [str(k) for k in values if keys.get(str(k).replace("-", "_"), str(k).replace("-", "_")) not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0].replace("-", "_"), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"its keys are the flags of `{command.prog} -h`"
        raise CLIError(f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} ({hint})")
    extra = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        dest = keys.get(name, name)
        if dest in actions:
            if dest not in namespace.given:
                setattr(namespace, dest, _config_value(actions[dest], value, f"--config {path}: {key}"))
                namespace.given.add(dest)  # given: by the user, on the command line or in the file
        else:
            extra[name] = value
    namespace.config_extra = extra


def _config_value(action: argparse.Action, value, where: str):
    """A --config value as its flag would have parsed it (type, list, switch, choices), or one line why not."""
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise CLIError(f"{where}: expected true or false, not {value!r}")
        return value
    if value is None:
        return None
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    if many != isinstance(value, list) or any(isinstance(v, (dict, list)) for v in (value if many else [value])):
        raise CLIError(f"{where}: expected {'a list of values' if many else 'one value'}, not {value!r}")
    convert = action.type or str
    try:
        items = [convert(str(v)) for v in (value if many else [value])]
    except (TypeError, ValueError):
        raise CLIError(f"{where}: {value!r} is not {getattr(convert, '__name__', 'valid')}") from None
    for item in items:
        if action.choices is not None and item not in action.choices:
            raise CLIError(f"{where}: {item!r} is not one of {', '.join(map(str, action.choices))}")
    return items if many else items[0]
