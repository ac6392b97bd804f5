#!/usr/bin/env python3
"""Soak test (issue 24): `kiln train gan` for an hour on the CPU with --eval-every and periodic
Ctrl-C/resume cycles, beside an uninterrupted run of the same configuration.

Two runs train at once, each on half the CPU's threads (RAYON_NUM_THREADS), so they compute
the same sums in the same order:
  cut/    is interrupted with SIGINT every few minutes (a random moment, mid-epoch, mid-eval or
          mid-checkpoint alike) and resumed from its checkpoints/latest.safetensors;
  whole/  runs without a break.
Every second the script reads each process's resident set size (VmRSS) and the epoch it is in
(from metrics.jsonl). At the end it prints, and writes to OUT/summary.txt:
  - the peak RSS of each epoch of each process, training and scoring apart: it must stay flat
    once the process's first evaluation has left its buffers with malloc (no epoch's peak more
    than --rss-slack-mib above the first epoch's after it; see rss_failures);
  - that every metrics.jsonl record of the cut run (losses, D(x), D(G(z)), epoch; not the
    timings) equals the uninterrupted run's record of the same step, and that no logged step
    is missing from it;
  - that the scores of every eval/step_*.json both runs wrote are the same.
It exits 1 if any of these fails. Not in CI: it takes an hour (--minutes).

Usage, from the repository root after `cargo build --release`:
  python3 scripts/soak.py [--minutes 60] [--out runs/soak] [--kiln target/release/kiln]
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

TIMING_FIELDS = {"images_per_s", "elapsed_s"}


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def records(run):
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line must parse: a kill must not tear one
    return out


def position(run, eval_every):
    """(epoch, phase): the 1-based epoch the run is in, from the last metrics record, and
    whether it is training or scoring (an epoch's last step logged, eval_every divides the
    epoch, and its eval/step_NNNNNNN.json not yet written)."""
    path = run / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            last = json.loads(f.read().decode(errors="replace").strip().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return 1, "train"
    epoch, step = last["epoch"], last["step"]
    finished = abs(epoch - round(epoch)) < 1e-9 and round(epoch) > 0
    if finished and eval_every and round(epoch) % eval_every == 0:
        if not (run / "eval" / f"step_{step:07}.json").exists():
            return round(epoch), "eval"
    return int(epoch) + 1, "train"


class Run:
    def __init__(self, name, folder, args, kiln, threads, eval_every, log):
        self.name, self.folder, self.args = name, folder, args
        self.eval_every = eval_every
        self.kiln, self.threads, self.log = kiln, threads, log
        self.process = None
        self.segment = 0
        self.peak = {}  # (segment, epoch, phase) -> peak RSS in MiB

    def start(self):
        resume = self.folder / "checkpoints" / "latest.safetensors"
        args = [str(self.kiln), "train", "gan", *self.args, "--out", str(self.folder)]
        if resume.exists():
            args += ["--resume", str(resume)]
        self.segment += 1
        env = dict(os.environ, RAYON_NUM_THREADS=str(self.threads))
        self.stderr = open(self.folder.parent / f"{self.name}.stderr.log", "a")
        self.stderr.write(f"--- segment {self.segment}: {' '.join(args)}\n")
        self.stderr.flush()
        self.process = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        self.log(f"{self.name}: segment {self.segment} started (pid {self.process.pid})")

    def sample(self):
        if self.process is None or self.process.poll() is not None:
            return
        rss = rss_mib(self.process.pid)
        if rss is None:
            return
        key = (self.segment, *position(self.folder, self.eval_every))
        self.peak[key] = max(self.peak.get(key, 0.0), rss)

    def interrupt(self):
        """Ctrl-C; returns the exit code (130 is an interrupted run that saved its checkpoint)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.stderr.close()
        self.log(f"{self.name}: segment {self.segment} stopped, exit {code}")
        return code


def compare_metrics(cut, whole):
    """Problems found comparing the cut run's records with the uninterrupted run's."""
    problems = []
    reference = {}
    for record in whole:
        reference[record["step"]] = without_timings(record)
    seen = set()
    for record in cut:
        step = record["step"]
        seen.add(step)
        mine = without_timings(record)
        if step in reference and reference[step] != mine:
            problems.append(f"step {step}: cut run {mine} != uninterrupted {reference[step]}")
    last = max(seen, default=0)
    missing = [s for s in reference if s <= last and s not in seen]
    if missing:
        problems.append(f"steps logged by the uninterrupted run but missing after a resume: {missing[:10]}")
    compared = len([s for s in seen if s in reference])
    return problems, compared


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if k not in TIMING_FIELDS and k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def eval_scores(run):
    return {path.name: without_timings(json.loads(path.read_text()))
            for path in sorted((run / "eval").glob("step_*.json"))}


def rss_rows(name, peak):
    """The summary's lines of `peak` ((segment, epoch, phase) -> MiB), as `--recheck` reads
    them back."""
    rows = []
    for segment in sorted({s for s, _, _ in peak}):
        for phase in ("train", "eval"):
            epochs = sorted((e, p) for (s, e, f), p in peak.items() if s == segment and f == phase)
            if epochs:
                row = " ".join(f"e{e}:{p:.0f}" for e, p in epochs)
                rows.append(f"  {name} segment {segment} {phase}: {row}")
    return rows


def rss_failures(name, peak, slack):
    """Growth within a process. Its first evaluation leaves its buffers with malloc (kiln keeps
    freed memory for the next use), so a process's steady state starts after that evaluation:
    from the first epoch trained after it (or from the second epoch, in a process that never
    scored), no epoch's training peak may pass that epoch's by more than `slack`, nor any
    evaluation's peak the first evaluation's."""
    failures = []
    for segment in sorted({s for s, _, _ in peak}):
        train = sorted((e, p) for (s, e, f), p in peak.items() if s == segment and f == "train")
        evals = sorted((e, p) for (s, e, f), p in peak.items() if s == segment and f == "eval")
        start = evals[0][0] + 1 if evals else (train[1][0] if len(train) > 1 else None)
        steady = [(e, p) for e, p in train if start is not None and e >= start]
        for what, series in (("train", steady), ("eval", evals)):
            if len(series) >= 2:
                base, worst = series[0][1], max(p for _, p in series)
                if worst > base + slack:
                    failures.append(f"{name} segment {segment} {what}: RSS grew from "
                                    f"{base:.0f} to {worst:.0f} MiB")
    return failures


def recheck(summary, slack):
    """Applies `rss_failures` to the RSS rows of an earlier run's summary.txt."""
    peaks = {}
    pattern = re.compile(r"\s(\w+) segment (\d+) (train|eval): ((?:e\d+:\d+ ?)+)$")
    for line in summary.read_text().splitlines():
        found = pattern.search(line)
        if found:
            name, segment, phase, row = found.groups()
            for epoch, mib in re.findall(r"e(\d+):(\d+)", row):
                peaks.setdefault(name, {})[(int(segment), int(epoch), phase)] = float(mib)
    failures = [f for name, peak in peaks.items() for f in rss_failures(name, peak, slack)]
    for name, peak in peaks.items():
        epochs = sorted({e for _, e, _ in peak})
        print(f"{name}: {len({s for s, _, _ in peak})} processes, epochs {epochs[0]}-{epochs[-1]}, "
              f"peak RSS {min(peak.values()):.0f}-{max(peak.values()):.0f} MiB")
    print("RSS " + ("grew:\n  " + "\n  ".join(failures) if failures else "flat"))
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--kiln", type=Path, default=Path("target/release/kiln"))
    parser.add_argument("--cycle-min-s", type=float, default=150.0, help="shortest segment")
    parser.add_argument("--cycle-max-s", type=float, default=420.0, help="longest segment")
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--rss-slack-mib", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recheck", type=Path, metavar="SUMMARY",
                        help="only apply the RSS check to an earlier run's summary.txt")
    options = parser.parse_args()
    if options.recheck:
        sys.exit(recheck(options.recheck, options.rss_slack_mib))

    if options.out.exists() and any(options.out.iterdir()):
        sys.exit(f"error: {options.out} is not empty")
    options.out.mkdir(parents=True, exist_ok=True)
    summary = open(options.out / "summary.txt", "w")

    def log(line):
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {line}", flush=True)
        summary.write(f"[{stamp}] {line}\n")
        summary.flush()

    info = subprocess.run([str(options.kiln), "info"], capture_output=True, text=True).stdout
    log("kiln info:\n" + info.strip())
    train_args = [
        "--quiet", "--epochs", "1000", "--log-every", "10",
        "--eval-every", str(options.eval_every), "--eval-samples", str(options.eval_samples),
        "--checkpoint-every", "2m",
    ]
    log(f"kiln train gan {' '.join(train_args)}; {options.threads} thread(s) per run; "
        f"{options.minutes} minutes; cut every {options.cycle_min_s}-{options.cycle_max_s} s")
    rng = random.Random(options.seed)
    shared = (options.kiln, options.threads, options.eval_every, log)
    cut = Run("cut", options.out / "cut", train_args, *shared)
    whole = Run("whole", options.out / "whole", train_args, *shared)
    deadline = time.monotonic() + options.minutes * 60
    failures = []
    whole.start()
    cut.start()
    next_cut = time.monotonic() + rng.uniform(options.cycle_min_s, options.cycle_max_s)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cut.sample()
        whole.sample()
        for run in (cut, whole):
            if run.process.poll() is not None:
                failures.append(f"{run.name} exited by itself with {run.process.returncode}")
                log(failures[-1])
                deadline = 0
        if time.monotonic() >= next_cut and time.monotonic() < deadline:
            code = cut.interrupt()
            if code != 130:
                failures.append(f"cut segment {cut.segment} exited {code}, not 130")
            cut.start()
            next_cut = time.monotonic() + rng.uniform(options.cycle_min_s, options.cycle_max_s)
    for run in (cut, whole):
        if run.process.poll() is None:
            code = run.interrupt()
            if code != 130:
                failures.append(f"{run.name} exited {code} at the end, not 130")

    log("peak RSS (MiB) per epoch, training and scoring apart, per run segment "
        "(each segment a process):")
    for run in (cut, whole):
        for line in rss_rows(run.name, run.peak):
            log(line)
        failures += rss_failures(run.name, run.peak, options.rss_slack_mib)
    (options.out / "rss.json").write_text(json.dumps(
        {run.name: [[s, e, f, p] for (s, e, f), p in sorted(run.peak.items())]
         for run in (cut, whole)}))

    cut_records, whole_records = records(cut.folder), records(whole.folder)
    problems, compared = compare_metrics(cut_records, whole_records)
    log(f"metrics: {len(cut_records)} records in the cut run ({cut.segment} segments), "
        f"{len(whole_records)} uninterrupted; {compared} steps compared, "
        f"{len(problems)} differences")
    failures += problems[:20]
    cut_evals, whole_evals = eval_scores(cut.folder), eval_scores(whole.folder)
    common = sorted(set(cut_evals) & set(whole_evals))
    differ = [name for name in common if cut_evals[name] != whole_evals[name]]
    log(f"eval: {len(cut_evals)} scored in the cut run, {len(whole_evals)} uninterrupted; "
        f"{len(common)} compared, {len(differ)} differ")
    failures += [f"{name}: eval scores differ" for name in differ]
    if failures:
        log("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    log("PASSED")


if __name__ == "__main__":
    main()
