"""What the command lines (`main`, `sweep`, `report`) share: flags parsed
into one `error:` line instead of a traceback, and a rank given in any form
the layers take.

`--config.model.rank` takes every rank spec: an int (`5`), a tuple
(`"(5, 5, 10)"`), a fraction of the dense parameters (`0.5`) or `same`;
ml_collections would hold it to the type the config file gave the field.
"""

import pathlib
import re
import shlex
import sys

import ml_collections
from absl import flags

from cpac_jax.config import override, parse_value

__all__ = ["command_line", "error_line", "parse_flags"]

_RANK = "--config.model.rank="


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS
                ) -> list[str]:
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`: a bad
  flag, config file, preset or override exits at once with one line,
  "error: ...", and status 2 (a usage error, as argparse's); errors found
  later, by `validate` or a run, exit with status 1."""
  try:
    return _parse(argv, flag_values)
  except SystemExit as stop:
    if isinstance(stop.code, str):
      print(stop.code, file=sys.stderr)
      raise SystemExit(2) from None
    raise


def _parse(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
  argv = _joined(argv)
  ranks = [arg[len(_RANK):] for arg in argv if arg.startswith(_RANK)]
  rest = [arg for arg in argv if not arg.startswith(_RANK)]
  try:
    args = flag_values(rest)
    config = flag_values["config"].value
    _ = config.model  # a file that failed to load raises only when read
    for rank in ranks:
      override(config, "model.rank", parse_value(rank))
  except AttributeError as error:  # a misspelt override, or a file's fault
    sys.exit(error_line(_unknown_field(error, rest) or _file_error(
        rest, _not_a_config(flag_values) or _described(error))))
  except (flags.Error, KeyError, ValueError, TypeError, OSError) as error:
    sys.exit(error_line(error))
  except Exception as error:  # pylint: disable=broad-except
    # The config file failed as it was imported or its get_config ran (a
    # syntax error, an exception of its own): one line naming it.
    sys.exit(error_line(_file_error(rest, _described(error))))
  return args


def _not_a_config(flag_values: flags.FlagValues) -> str | None:
  """What is wrong with what get_config() returned, if it ran and returned
  something other than a ConfigDict."""
  try:
    config = flag_values["config"].value
  except Exception:  # pylint: disable=broad-except
    return None
  if config is None or isinstance(config, ml_collections.ConfigDict) or (
      hasattr(config, "__getattr__")):  # ml_collections' stub of a failure
    return None
  return (f"get_config() returned an object of type {type(config).__name__},"
          " not an ml_collections.ConfigDict")


def _described(error: Exception) -> str:
  if isinstance(error, SyntaxError):
    return f"SyntaxError at line {error.lineno}: {error.msg}"
  if "has no attribute 'get_config'" in str(error):
    return "it defines no get_config()"
  return f"{type(error).__name__}: {error}"


def _file_error(argv: list[str], what: str) -> ValueError:
  files = [arg.split("=", 1)[1] for arg in argv
           if arg.startswith("--config=")]
  return ValueError(f"config file {files[0] if files else '?'}: {what}")


def _unknown_field(error: AttributeError, argv: list[str]
                   ) -> ValueError | None:
  """One line for an override naming no field: the flag as given and
  ml_collections' nearest name; None when no override names it (the
  error is the config file's)."""
  text = str(error).strip("'\"").replace("\\'", "'")
  name = text.split("'")[1] if text.count("'") >= 2 else text.split()[0]
  given = [arg.split("=", 1)[0] for arg in argv
           if arg.startswith("--config.")
           and name in arg.split("=", 1)[0][len("--config."):].split(".")]
  hint = re.search(r'Did you mean "([^"]+)"', text)
  if not given and not hint:
    return None
  return ValueError(
      f"unknown config field {name!r}"
      + (f" in {given[0]}" if given else "")
      + (f"; did you mean {hint.group(1)!r}?" if hint else
         "; see the config file for its fields"))


def _joined(argv: list[str]) -> list[str]:
  """`--config.model.rank VALUE` (a space, as absl allows for any flag) as
  `--config.model.rank=VALUE`, so the rank takes every spec either way."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] == _RANK[:-1] and i + 1 < len(argv):
      out.append(_RANK + argv[i + 1])
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


def error_line(error: BaseException) -> str:
  """The one line a command line ends with when `error` stops it; where
  rerunning resumes the run, the command to rerun."""
  if isinstance(error, KeyboardInterrupt):  # outside the training loop
    text = ("Ctrl-C: stopped; rerun the same command to resume from the last "
            "checkpoint")
  else:
    text = _one_line(error)
  if "No space left on device" in text:
    text += ("; free some space and rerun the same command: it resumes "
             "from the last checkpoint")
  if "rerun the same command" in text:
    text += f" ({command_line()})"
  return "error: " + text


def command_line() -> str:
  """This process's command, as a user would type it again."""
  program = pathlib.Path(sys.argv[0])
  head = (["python", "-m", f"cpac_jax.{program.stem}"]
          if program.parent.name == "cpac_jax" else [sys.argv[0]])
  return shlex.join(head + sys.argv[1:])


def _one_line(error: Exception) -> str:
  if isinstance(error, KeyError) and error.args:  # an unknown override
    text = " ".join(str(error.args[0]).split())
    hint = re.search(r'Did you mean "([^"]+)"', text)
    name = text.split(" Did you mean")[0]
    return (f"unknown config field {name}"
            + (f"; did you mean {hint.group(1)!r}?" if hint else ""))
  text = str(error)
  if "Traceback (most recent call last)" in text:  # a config file raised
    cause = text.strip().splitlines()[-1]
    return f"{text.splitlines()[0].split(':')[0]}: {cause}"
  return " ".join(text.split())

