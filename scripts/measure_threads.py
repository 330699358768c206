"""Seconds per distillation iteration by torch thread count and OpenMP wait policy, with
and without competing busy processes: the measurement behind ``--threads``' default and
the ``OMP_WAIT_POLICY=PASSIVE`` that ``tesla`` sets before torch starts its threads.

Each condition runs in a fresh child (the OpenMP runtime reads ``OMP_WAIT_POLICY`` once,
when it starts), times one warm-up and ``--repeats`` iterations of the ``tesla`` engine
(the bench's problem: a ConvNet, replayed DSA), and prints the median. ``--load K``
starts K busy-looping processes for the duration of the children that ask for load, the
way other jobs share a small machine.

    python scripts/measure_threads.py --repeats 3 --load 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

PROBLEMS = {
    # name: (depth, width, image side, ipc, steps)
    "demo": (2, 32, 16, 1, 15),
    "cifar-w32": (3, 32, 32, 10, 15),
    "cifar-w32-5": (3, 32, 32, 10, 5),  # the same network and set, 5 steps: a third of the time
}


def child(problem: str, threads: int, repeats: int) -> None:
    import torch

    from tesla.adapters.torch.bench import build_problem, run_iteration
    from tesla.domain.bench import BenchSettings
    from tesla.domain.config import ModelConfig

    torch.set_num_threads(threads)
    depth, width, side, ipc, steps = PROBLEMS[problem]
    s = BenchSettings(model=ModelConfig(depth=depth, width=width, image_size=side), ipc=ipc, device="cpu",
                      threads=threads)
    p = build_problem(s)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        run_iteration(p, s, "tesla", steps)
        if i:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"median": statistics.median(times), "all": times}), flush=True)


def busy() -> None:  # pragma: no cover - a load generator
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=int, default=2, help="busy processes in the loaded conditions")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--policies", default="default,PASSIVE,ACTIVE")
    args = ap.parse_args()
    rows = []
    for problem, load, threads, policy in itertools.product(args.problems.split(","), (0, args.load),
                                                            [int(t) for t in args.threads.split(",")],
                                                            args.policies.split(",")):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        try:
            out = subprocess.run([sys.executable, __file__, "_child", problem, str(threads), str(args.repeats)],
                                 env=env, capture_output=True, text=True, check=True).stdout
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        r = json.loads(out.strip().splitlines()[-1])
        rows.append((problem, load, threads, policy, r["median"]))
        print(f"{problem:10s} load {load}  threads {threads}  OMP_WAIT_POLICY {policy:8s} "
              f"{r['median']:7.3f} s/iteration  ({', '.join(f'{t:.3f}' for t in r['all'])})", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
