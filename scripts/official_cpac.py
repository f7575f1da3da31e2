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

(TensorLy 0.4.0 is the release the official README names.) The only
change made to the code is `official.patch` beside the logs
(`experiments/cpac_mnist/official_runs/`), which adds two things, both
inert when their environment variables are unset:

- `CPAC_SEED`: reseeds numpy and torch after the imports that seed them with
  48 (the seed-48 runs leave it unset, so they are the published code);
- `CPAC_CHECKPOINT`: saves the net, the optimizer, torch's RNG state and the
  log's folder after each epoch and resumes from them, so a run killed
  between epochs goes on where it stopped (the code keeps no checkpoint of
  its own, and an MNIST epoch takes minutes: the records give each one's
  seconds).

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

A run takes longer than a session and the machine is not always kept
between sessions, so the checkpoint is mirrored too, to `OUT/state/NAME.pt`
(about 150 kB), and committed with the log: a runner that finds no checkpoint
in the run's folder rebuilds the folder from the mirrored checkpoint and
log and goes on from there. A finished run's state file is removed.

Usage (two queues at a time, one thread each):

  venv_official/bin/python scripts/official_cpac.py \
      --official_dir=CPAC-CNN --runs=rank10:48:20,rank10:1:10 &
"""

import argparse
import fcntl
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
  """The run's log file and its per-epoch test lines, in order. A run keeps
  one log (a resumed launch writes to the folder its checkpoint names)."""
  logs = sorted(workdir.glob("result/*/*.txt"))
  if len(logs) > 1:
    raise SystemExit(f"{workdir} holds {len(logs)} logs, want one: "
                     f"{[str(p) for p in logs]}")
  if not logs:
    return None, []
  lines = [line.strip() for line in logs[0].read_text().splitlines()
           if TEST_LINE in line]
  return logs[0], lines


def _write_json(path: pathlib.Path, data: dict) -> None:
  """Whole or not at all: a kill never leaves half a record."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=1) + "\n")
  os.replace(tmp, path)


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
  prepare(workdir, official_dir, data_dir)
  with open(workdir / ".lock", "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise SystemExit(f"{name}: another runner is on it ({workdir})") from None
    _run(name, setting, seed, epochs, workdir)


def _run(name: str, setting: str, seed: int, epochs: int,
         workdir: pathlib.Path) -> None:
  """`run`, holding the run's lock."""
  script = "train_mnist_cnn.py" if setting == "dense" else "train_mnist.py"
  rank = "1" if setting == "dense" else setting[4:]  # dense: rank unused
  command = [script, "8", "3", rank, str(epochs), "cpu"]
  env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             CPAC_CHECKPOINT=str(workdir / "checkpoint.pt"),
             PYTHONUNBUFFERED="1")
  env.pop("CPAC_SEED", None)
  if seed != OFFICIAL_SEED:
    env["CPAC_SEED"] = str(seed)
  # The checkpoint says how far the run got. A run killed after its test
  # line but before its checkpoint repeats that epoch: keep only the lines
  # the checkpoint covers; one killed in its first epoch starts afresh.
  done = 0
  checkpoint = workdir / "checkpoint.pt"
  state = OUT / "state" / f"{name}.pt"
  if not checkpoint.exists() and state.exists():
    _restore(state, workdir, log_name=f"mnist_2layer_8_{rank}_{epochs}.txt",
             record=json.loads((OUT / f"{name}.json").read_text()))
  if checkpoint.exists():
    import torch  # pylint: disable=g-import-not-at-top
    done = torch.load(checkpoint, weights_only=False)["epoch"]
  else:
    shutil.rmtree(workdir / "result", ignore_errors=True)
    (workdir / "result").mkdir()
  log, lines = test_lines(workdir)
  lines = lines[:done]
  if log is not None:
    log.write_text("".join(f"\n{line}\n\n" for line in lines))
  record_path = workdir / "record.json"  # kept beside the checkpoint
  before = (json.loads(record_path.read_text()) if record_path.exists()
            else {})
  seconds = before.get("epoch_seconds", [])
  record = {
      "official_code": f"wyn430/CPAC-CNN {COMMIT}",
      "patch": PATCH.name,
      "patch_sha256": hashlib.sha256(PATCH.read_bytes()).hexdigest(),
      "command": " ".join(["python"] + command),
      "seed": seed,
      "seed_source": ("as published (the scripts seed numpy and torch "
                      "with 48)") if seed == OFFICIAL_SEED else "CPAC_SEED",
      "threads": 1,
      "epochs": epochs,
      "epochs_done": done,
      # Seconds of each epoch, None where a stop lost the time.
      "epoch_seconds": (seconds + [None] * done)[:done],
      "test_lines": lines,
      "versions": versions(),
      **({"failed_launches": before["failed_launches"]}
         if "failed_launches" in before else {}),
  }

  def mirror() -> None:
    """The record, its human-readable log and the checkpoint, to OUT."""
    _write_json(record_path, record)
    _write_json(OUT / f"{name}.json", record)
    (OUT / f"{name}.log").write_text(
        "".join(f"{line}\n" for line in record["test_lines"]))
    sync_state()

  copied = [None]

  def sync_state() -> None:
    """The checkpoint, whenever the script has saved a new one, to OUT."""
    if record["epochs_done"] == epochs:
      state.unlink(missing_ok=True)
    elif checkpoint.exists() and checkpoint.stat().st_mtime_ns != copied[0]:
      copied[0] = checkpoint.stat().st_mtime_ns
      state.parent.mkdir(exist_ok=True)
      shutil.copy(checkpoint, state.with_suffix(".tmp"))
      os.replace(state.with_suffix(".tmp"), state)

  mirror()
  print(f"{name}: from epoch {done + 1}", flush=True)
  for _ in range(MAX_LAUNCHES):
    returncode, build_failed = _launch(command, workdir, env, record,
                                       mirror, sync_state, name)
    if not build_failed:
      break
    # TensorLy's unseeded fill can leave parafac a singular system when the
    # net is built; a new launch draws a new fill (and a resumed run loads
    # its checkpoint over the built net, so nothing of the run changes).
    record["failed_launches"] = record.get("failed_launches", 0) + 1
    mirror()
    print(f"{name}: building the net failed ({_BUILD_FAILURE}); launching "
          "again", flush=True)
  if returncode != 0 or record["epochs_done"] != epochs:
    raise SystemExit(f"{name}: exited with {returncode} after "
                     f"{record['epochs_done']} of {epochs} epochs; see "
                     f"{workdir / 'stderr.txt'}")


MAX_LAUNCHES = 10
# The one failure a new launch cures: parafac's solve on the unseeded fill.
_BUILD_FAILURE = "numpy.linalg.LinAlgError: Singular matrix"


def _launch(command, workdir, env, record, mirror, sync_state,
            name) -> tuple[int, bool]:
  """Runs the script once, mirroring each epoch as its test line appears.
  Returns its exit status and whether it failed building the net (parafac's
  `_BUILD_FAILURE`, before any epoch of this launch)."""
  stderr_path = workdir / "stderr.txt"
  offset = stderr_path.stat().st_size if stderr_path.exists() else 0
  epochs_before = record["epochs_done"]
  with open(workdir / "stdout.txt", "a") as stdout, \
       open(stderr_path, "a") as stderr:
    process = subprocess.Popen([sys.executable] + command, cwd=workdir,
                               env=env, stdout=stdout, stderr=stderr)
    try:
      started = time.monotonic()
      while True:
        finished = process.poll() is not None
        _, lines = test_lines(workdir)
        if len(lines) > record["epochs_done"]:
          now = time.monotonic()
          record["epoch_seconds"] += [None] * (len(lines) - 1 - len(
              record["epoch_seconds"])) + [round(now - started, 1)]
          started = now
          record["epochs_done"], record["test_lines"] = len(lines), lines
          mirror()
          print(f"{name}: {lines[-1]}", flush=True)
        sync_state()
        if finished:
          break
        time.sleep(20)
    finally:  # the runner stopped: its child stops with it
      if process.poll() is None:
        process.terminate()
        process.wait()
  with open(stderr_path, "rb") as f:
    f.seek(offset)
    new = f.read().decode(errors="replace")
  build_failed = (process.returncode != 0
                  and record["epochs_done"] == epochs_before
                  and "parafac" in new and _BUILD_FAILURE in new)
  return process.returncode, build_failed


def _restore(state: pathlib.Path, workdir: pathlib.Path, log_name: str,
             record: dict) -> None:
  """Rebuilds a run's folder from its mirrored checkpoint and record: the
  checkpoint, the log (in the folder the checkpoint names, holding the test
  lines the checkpoint covers) and the record with its epoch times."""
  import torch  # pylint: disable=g-import-not-at-top
  saved = torch.load(state, weights_only=False)
  lines = record["test_lines"][:saved["epoch"]]
  if len(lines) != saved["epoch"]:
    raise SystemExit(f"{state} is at epoch {saved['epoch']} but "
                     f"{record['test_lines']} has {len(lines)} test lines")
  shutil.rmtree(workdir / "result", ignore_errors=True)
  log = workdir / saved["file_root"] / log_name
  log.parent.mkdir(parents=True)
  log.write_text("".join(f"\n{line}\n\n" for line in lines))
  _write_json(workdir / "record.json", record)
  shutil.copy(state, workdir / "checkpoint.pt")


_SMALL_MNIST = """\
import torchvision
_init = torchvision.datasets.MNIST.__init__
def _small(self, *args, **kwargs):
  _init(self, *args, **kwargs)
  self.data, self.targets = self.data[:1000], self.targets[:1000]
torchvision.datasets.MNIST.__init__ = _small
"""


def _same_state(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Whether two checkpoints hold the same net, optimizer and RNG state,
  exactly, up to the signs of CP factor columns: ARPACK's random start in
  TensorLy's SVD init leaves each column's sign free from launch to launch
  (flipping a pair of a component's columns leaves its kernel, and so the
  run, unchanged), so a factor is compared by the kernel it rebuilds and
  Adam's first moment by its magnitude; float64 tensors to 1e-12, the
  rest bit for bit."""
  import torch  # pylint: disable=g-import-not-at-top

  def canonical(path: pathlib.Path) -> dict:
    state = torch.load(path, weights_only=False)
    net = dict(state["net"])
    for conv in sorted({k.split(".")[0] for k in net if ".factor" in k}):
      factors = [net.pop(f"{conv}.factor{i}") for i in range(4)]
      net[f"{conv}.kernel"] = torch.einsum("ar,br,cr,dr->abcd", *factors)
    moments = {f"{i}.{name}": value.abs() if name == "exp_avg" else value
               for i, slot in state["optimizer"]["state"].items()
               for name, value in slot.items()}
    return {**net, **moments, "rng": state["rng"]}

  left, right = canonical(a), canonical(b)
  # The factors' float64 kernels and moments agree to rounding (their
  # products' order of signs differs), everything else bit for bit.
  return left.keys() == right.keys() and all(
      torch.allclose(v, right[k], rtol=0, atol=1e-12)
      if v.dtype == torch.float64 else torch.equal(v, right[k])
      for k, v in left.items())


def check_resume(official_dir: pathlib.Path, data_dir: pathlib.Path,
                 runs_dir: pathlib.Path) -> None:
  """The patched script on the first 1,000 training and test images (a
  sitecustomize cuts torchvision's MNIST), rank 1 (no unseeded fill),
  seed 5, 3 epochs: once straight through, once stopped after epoch 1 and
  resumed; writes both runs' test lines, and whether their final nets,
  optimizer states and RNG states are equal (`_same_state`), to
  OUT/resume_check.json, and fails unless they are."""
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
  same_state = _same_state(*(runs_dir / f"resume_check_{name}" /
                             "checkpoint.pt" for name in lines))
  same = (lines["straight"] == lines["resumed"]
          and len(lines["straight"]) == 3 and same_state)
  _write_json(OUT / "resume_check.json", {
      "what": check_resume.__doc__.split("; writes")[0].replace("\n  ", " "),
      "same_test_lines": lines["straight"] == lines["resumed"],
      "same_final_state": same_state, **lines, "versions": versions()})
  if not same:
    raise SystemExit(f"resuming changed the run: {lines}, same state: "
                     f"{same_state}")
  print(f"resume check: the same {len(lines['straight'])} test lines and "
        "the same final state")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--official_dir", required=True, type=pathlib.Path,
                      help="a checkout of wyn430/CPAC-CNN at e609011")
  parser.add_argument("--runs",
                      help="comma-separated SETTING:SEED:EPOCHS, run in order")
  parser.add_argument("--check_resume", action="store_true",
                      help="check, on 1,000 images, that a stopped and "
                      "resumed run ends where one run through does")
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
