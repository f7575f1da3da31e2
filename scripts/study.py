"""Run the studies of `configs.studies`: their stages, then their tables.

  python scripts/study.py run [NAME ...]   # default: configs.studies.DEFAULT
  python scripts/study.py tables           # every table, from committed files
  python scripts/study.py list [NAME ...]  # each study's commands, run nothing

`run` fetches each study's data (scripts/fetch_data.sh), runs its stages
in order (each resumes where its results stop), then its table commands,
and at the end the summaries drawn from several studies (the CPAC gap
blocks and the top README's table). `tables` runs every study's table
commands and the summaries, training nothing. A command that fails stops
the rest, with its exit status.
"""

import shlex
import subprocess
import sys

from configs.studies import DEFAULT, STUDIES, SUMMARIES

USAGE = __doc__.split("\n\n")[1]


def _run(command: tuple[str, ...]) -> None:
  print(f"+ {shlex.join(command)}", flush=True)
  if subprocess.run(command).returncode:
    raise SystemExit(f"failed: {shlex.join(command)}")


def _studies(names: list[str]):
  unknown = [name for name in names if name not in STUDIES]
  if unknown:
    raise SystemExit(f"unknown studies {unknown}; valid: "
                     f"{', '.join(STUDIES)}")
  return [STUDIES[name] for name in names]


def main(argv: list[str]) -> None:
  if not argv or argv[0] not in ("run", "tables", "list"):
    raise SystemExit(f"usage:\n{USAGE}")
  action, names = argv[0], argv[1:]
  if action == "tables":
    if names:
      raise SystemExit("tables takes no names: it rewrites every table")
    commands = [c for study in STUDIES.values() for c in study.tables]
  else:
    studies = _studies(names or list(DEFAULT))
    data = sorted({d for study in studies for d in study.data})
    commands = [("bash", "scripts/fetch_data.sh", *data)] if data else []
    commands += [c for study in studies for c in study.stages + study.tables]
  commands += list(SUMMARIES)
  if action == "list":
    print("\n".join(shlex.join(c) for c in commands))
    return
  for command in commands:
    _run(command)


if __name__ == "__main__":
  main(sys.argv[1:])
