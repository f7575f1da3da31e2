"""Runs the official CPAC-CNN code on MNIST here, one queue of runs at a time.

The official repository is wyn430/CPAC-CNN at commit e609011 (2020-05-28);
its `CPAC-CNN-GPU/train_mnist.py` (two CP conv layers) and
`train_mnist_cnn.py` (the dense net) are run as published, on the CPU
(device argument `cpu`) with one thread, under the Python environment this
script is started with. That environment needs what the official code
imports and nothing of cpac_jax:

  python -m venv venv_official
  venv_official/bin/pip install torch==2.14.1 torchvision==0.29.1 \
      tensorly==0.4.0 scipy scikit-learn

(TensorLy 0.4.0 is the release the official README names; 0.4.3's
partial_svd fails at ranks 10-12.) The only change made to the code is
`official.patch` beside the logs (`experiments/cpac_mnist/official_runs/`),
which adds two things, both inert when their environment variables are
unset:

- `CPAC_SEED`: reseeds numpy and torch after the imports that seed them with
  48 (the seed-48 runs leave it unset, so they are the published code);
- `CPAC_CHECKPOINT`: saves the net, the optimizer, torch's RNG state and the
  log's folder after each epoch and resumes from them, so a run killed
  between epochs goes on where it stopped (an MNIST epoch takes 7-10 minutes
  on one core, and the code keeps no checkpoint of its own).

Not covered by any seed: TensorLy 0.4.0's parafac fills the columns of a
factor whose mode is smaller than the rank from an OS-seeded RandomState,
so no two runs start from the same CP factors, not even at seed 48.

Each run works in `runs/official_cpac/NAME/` (the copied scripts, the MNIST
IDX files where torchvision looks for them, the checkpoint) and mirrors its
log, as each epoch ends, to `OUT/NAME.log`, with `OUT/NAME.json` saying
what ran (command, versions, epochs done, seconds per epoch). NAME is
`rank{R}_seed{S}_epochs{E}`, or `dense_...` for the dense net. A run whose
json says it is done is skipped, so the same queue can be started again in
every session until it is through.

Usage (two queues at a time, one thread each):

  venv_official/bin/python scripts/official_cpac.py \
      --official_dir=CPAC-CNN --runs=rank10:48:20,rank10:1:10 &
"""

import argparse
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "cpac_mnist" / "official_runs"
PATCH = OUT / "official.patch"
COMMIT = "e60901129e7784a0aef29c8b89316b7da3e54609"
# git blob ids of the files run, at COMMIT: a checkout at another commit is
# refused rather than run under this commit's name.
BLOBS = {
    "train_mnist.py": "dbb9d2b724fe6edf932802368c966c195cfe59f5",
    "train_mnist_cnn.py": "6cd9a736394823126ede70e2a7ef25b7d437c094",
    "cnn_torch.py": "6ae8592a9f211b4e5a748de8825fb94fad111acd",
    "conv_decomp_torch.py": "309e42a9d7b84d58938f12d1d6629033b384078b",
}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
OFFICIAL_SEED = 48
TEST_LINE = "Test set:"


def parse_run(text: str) -> tuple[str, int, int]:
  """'rank10:48:20' -> ('rank10', 48, 20); 'dense:1:10' likewise."""
  parts = text.split(":")
  setting = parts[0]
  rank = setting[4:] if setting.startswith("rank") else ""
  ok = len(parts) == 3 and all(p.isdigit() for p in parts[1:]) and (
      setting == "dense" or (rank.isdigit() and int(rank) > 0))
  if not ok or int(parts[2]) < 1:
    raise SystemExit(f"bad run {text!r}: want SETTING:SEED:EPOCHS, SETTING "
                     "'dense' or 'rankR' (R >= 1), e.g. rank10:48:20")
  return setting, int(parts[1]), int(parts[2])


def run_name(setting: str, seed: int, epochs: int) -> str:
  return f"{setting}_seed{seed}_epochs{epochs}"


def git_blob_id(path: pathlib.Path) -> str:
  data = path.read_bytes()
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def prepare(workdir: pathlib.Path, official_dir: pathlib.Path,
            data_dir: pathlib.Path) -> None:
  """Copies the official scripts into `workdir`, patches them, links MNIST."""
  gpu = official_dir / "CPAC-CNN-GPU"
  for name, blob in BLOBS.items():
    source = gpu / name
    if not source.exists():
      raise SystemExit(f"{source} not found: --official_dir must be a checkout "
                       f"of wyn430/CPAC-CNN at {COMMIT[:7]}")
    if git_blob_id(source) != blob:
      raise SystemExit(f"{source} is not the file at wyn430/CPAC-CNN "
                       f"{COMMIT[:7]} (git blob {git_blob_id(source)[:7]}, "
                       f"want {blob[:7]})")
  if (workdir / "train_mnist.py").exists():
    return
  workdir.mkdir(parents=True, exist_ok=True)
  for name in BLOBS:
    shutil.copy(gpu / name, workdir / name)
  subprocess.run(["git", "apply", "-p1", str(PATCH)], cwd=workdir, check=True)
  raw = workdir / "data" / "MNIST" / "raw"
  raw.mkdir(parents=True, exist_ok=True)
  for name in MNIST_FILES:
    packed = data_dir / f"{name}.gz"
    if not packed.exists():
      raise SystemExit(f"{packed} not found: fetch MNIST with "
                       "`bash scripts/fetch_data.sh mnist` or pass --data_dir")
    with gzip.open(packed) as src, open(raw / name, "wb") as dst:
      shutil.copyfileobj(src, dst)
  (workdir / "result").mkdir(exist_ok=True)


def test_lines(workdir: pathlib.Path) -> tuple[pathlib.Path | None, list[str]]:
  """The run's log file and its per-epoch test lines, in order."""
  logs = sorted(workdir.glob("result/*/*.txt"))
  if not logs:
    return None, []
  lines = [line for line in logs[0].read_text().splitlines()
           if TEST_LINE in line]
  return logs[0], lines


def versions() -> dict[str, str]:
  out = {"python": sys.version.split()[0]}
  for module in ("torch", "torchvision", "tensorly", "numpy", "scipy"):
    out[module] = __import__(module).__version__
  return out


def run(setting: str, seed: int, epochs: int, official_dir: pathlib.Path,
        data_dir: pathlib.Path, runs_dir: pathlib.Path) -> None:
  name = run_name(setting, seed, epochs)
  if (OUT / f"{name}.json").exists() and json.loads(
      (OUT / f"{name}.json").read_text())["epochs_done"] == epochs:
    print(f"{name}: done, skipped", flush=True)
    return
  workdir = runs_dir / name
  # The record lives beside the checkpoint (a new checkout keeps neither the
  # uncommitted mirror nor its epoch times) and is mirrored to OUT.
  record_path = workdir / "record.json"
  record = json.loads(record_path.read_text()) if record_path.exists() else {}
  prepare(workdir, official_dir, data_dir)
  script = "train_mnist_cnn.py" if setting == "dense" else "train_mnist.py"
  rank = "1" if setting == "dense" else setting[4:]  # dense: rank unused
  command = [script, "8", "3", rank, str(epochs), "cpu"]
  env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             CPAC_CHECKPOINT=str(workdir / "checkpoint.pt"),
             PYTHONUNBUFFERED="1")
  env.pop("CPAC_SEED", None)
  if seed != OFFICIAL_SEED:
    env["CPAC_SEED"] = str(seed)
  # A run killed after its test line but before its checkpoint repeats that
  # epoch: keep only the lines the checkpoint covers.
  done = 0
  log, lines = test_lines(workdir)
  checkpoint = workdir / "checkpoint.pt"
  if checkpoint.exists():
    import torch  # pylint: disable=g-import-not-at-top
    done = torch.load(checkpoint, weights_only=False)["epoch"]
  if log is not None:
    log.write_text("".join(f"{line}\n\n" for line in lines[:done]))
  record = {
      "official_code": f"wyn430/CPAC-CNN {COMMIT}",
      "patch": PATCH.name,
      "command": " ".join(["python"] + command),
      "seed": seed,
      "seed_source": ("as published (the scripts seed numpy and torch "
                      "with 48)") if seed == OFFICIAL_SEED else "CPAC_SEED",
      "threads": 1,
      "epochs": epochs,
      "epochs_done": done,
      "epoch_seconds": record.get("epoch_seconds", [])[:done],
      "versions": versions(),
  }

  def mirror(lines: list[str]) -> None:
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    (OUT / f"{name}.log").write_text("".join(f"{line}\n" for line in lines))
    shutil.copy(record_path, OUT / f"{name}.json")

  if done:
    mirror(lines[:done])
  print(f"{name}: from epoch {done + 1}", flush=True)
  process = subprocess.Popen([sys.executable] + command, cwd=workdir, env=env,
                             stdout=open(workdir / "stdout.txt", "a"),
                             stderr=open(workdir / "stderr.txt", "a"))
  started = time.monotonic()
  while True:
    finished = process.poll() is not None
    log, lines = test_lines(workdir)
    if len(lines) > record["epochs_done"]:
      now = time.monotonic()
      record["epoch_seconds"].append(round(now - started, 1))
      started = now
      record["epochs_done"] = len(lines)
      mirror(lines)
      print(f"{name}: {lines[-1].strip()}", flush=True)
    if finished:
      break
    time.sleep(20)
  if process.returncode != 0 or record["epochs_done"] != epochs:
    raise SystemExit(f"{name}: exited with {process.returncode} after "
                     f"{record['epochs_done']} of {epochs} epochs; see "
                     f"{workdir / 'stderr.txt'}")


_SMALL_MNIST = """\
import torchvision
_init = torchvision.datasets.MNIST.__init__
def _small(self, *args, **kwargs):
  _init(self, *args, **kwargs)
  self.data, self.targets = self.data[:300], self.targets[:300]
torchvision.datasets.MNIST.__init__ = _small
"""


def check_resume(official_dir: pathlib.Path, data_dir: pathlib.Path,
                 runs_dir: pathlib.Path) -> None:
  """The patched script on 300 training and 300 test images (a
  sitecustomize cuts torchvision's MNIST), rank 1 (no unseeded fill),
  seed 5, 3 epochs: once straight through, once stopped after epoch 1 and
  resumed; writes both runs' test lines to OUT/resume_check.json and
  fails unless they are the same."""
  lines = {}
  for name, legs in (("straight", ["3"]), ("resumed", ["1", "3"])):
    workdir = runs_dir / f"resume_check_{name}"
    shutil.rmtree(workdir, ignore_errors=True)
    prepare(workdir, official_dir, data_dir)
    (workdir / "site").mkdir()
    (workdir / "site" / "sitecustomize.py").write_text(_SMALL_MNIST)
    env = dict(os.environ, OMP_NUM_THREADS="1", CPAC_SEED="5",
               PYTHONPATH=str(workdir / "site"),
               CPAC_CHECKPOINT=str(workdir / "checkpoint.pt"))
    for epochs in legs:
      subprocess.run([sys.executable, "train_mnist.py", "8", "3", "1", epochs,
                      "cpu"], cwd=workdir, env=env, check=True,
                     stdout=subprocess.DEVNULL)
    # The resumed leg logs beside the first, under its own epoch count.
    logs = sorted(workdir.glob("result/*/*.txt"))
    lines[name] = [line.strip() for log in logs
                   for line in log.read_text().splitlines()
                   if TEST_LINE in line]
  same = lines["straight"] == lines["resumed"] and len(lines["straight"]) == 3
  (OUT / "resume_check.json").write_text(json.dumps(
      {"what": check_resume.__doc__.split(";")[0].replace("\n  ", " "),
       "same": same, **lines, "versions": versions()}, indent=1) + "\n")
  if not same:
    raise SystemExit(f"resuming changed the run: {lines}")
  print(f"resume check: the same {len(lines['straight'])} test lines")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--official_dir", required=True, type=pathlib.Path,
                      help="a checkout of wyn430/CPAC-CNN at e609011")
  parser.add_argument("--runs",
                      help="comma-separated SETTING:SEED:EPOCHS, run in order")
  parser.add_argument("--check_resume", action="store_true",
                      help="check, on 300 images, that a stopped and resumed "
                      "run prints what one run through does (a minute)")
  parser.add_argument("--data_dir", type=pathlib.Path,
                      default=pathlib.Path(os.environ.get(
                          "CPAC_DATA_DIR", "data")) / "mnist",
                      help="folder of MNIST's four IDX .gz files")
  parser.add_argument("--runs_dir", type=pathlib.Path,
                      default=ROOT / "runs" / "official_cpac",
                      help="where each run's checkpoint and log are kept; "
                      "outside the checkout if it is laid anew between "
                      "sessions")
  args = parser.parse_args()
  if args.check_resume:
    check_resume(args.official_dir.resolve(), args.data_dir.resolve(),
                 args.runs_dir.resolve())
    return
  if not args.runs:
    parser.error("give --runs (or --check_resume)")
  queue = [parse_run(r) for r in args.runs.split(",")]
  for setting, seed, epochs in queue:
    run(setting, seed, epochs, args.official_dir.resolve(),
        args.data_dir.resolve(), args.runs_dir.resolve())


if __name__ == "__main__":
  main()
