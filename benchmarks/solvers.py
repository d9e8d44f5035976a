"""How close each LocDiT sampler setting lands to the exact ODE solution, per LocDiT evaluation spent.

The shipped model generates a few training-split clips (never the held-out ones: this chooses a setting);
the first LocDiT call of every patch trajectory is caught with a forward pre-hook, which gives that patch's
plan, previous patch and noise. Each setting then integrates the same patches, and its relative RMS
distance to a 64-step midpoint solution is printed against its evaluations per patch (NFE; one evaluation
is one batched cond + uncond LocDiT call). Whether a setting keeps the music is measured on held-out clips
by `videorobin quality --steps N` (README "Fewer refinement steps").

With --student DIR (a `train --stage distill` export of --checkpoint), the student's LocDiT integrates the
same patches at a few Euler steps and is measured against the same exact solution of its teacher; give it
held-out clips (--manifest data/heldout.jsonl) to see how the distillation carries to clips it never saw.

    python benchmarks/solvers.py [--checkpoint DIR] [--student DIR] [--manifest FILE] [--clips 8] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from model.checkpoint import default_checkpoint, load_bundle
from model.engine import Engine, GenerationParams
from model.flow import sample_flow

SETTINGS = [("euler", n) for n in (4, 6, 8, 10, 20)] + [("midpoint", n) for n in (2, 3, 4, 5, 10)]
STUDENT_STEPS = (1, 2, 3, 4, 6)  # Euler


def catch_first_calls(engine: Engine, manifest: str, clips: int, seconds: float) -> dict[str, torch.Tensor]:
    """Plans, previous patches and noise of every patch the engine refines for `clips` training clips."""
    rows = [json.loads(line) for line in open(manifest)]
    rows = rows[:: max(1, len(rows) // clips)][:clips]  # spread over pieces
    caught: list[tuple[torch.Tensor, ...]] = []

    def first_call(_module, args):
        mu2, t2, prev2, x2 = args  # (2B, ...): cond rows, then uncond
        if bool((t2 == 1).all()):  # the trajectory's first evaluation: x is the noise
            B = mu2.shape[0] // 2
            caught.append((mu2[:B].clone(), prev2[:B].clone(), x2[:B].clone()))

    hook = engine.bundle.model.locdit.register_forward_pre_hook(first_call)
    try:
        requests = [
            engine.make_request(r["video"], r["caption"], GenerationParams(seed=i, duration_s=seconds))
            for i, r in enumerate(rows)
        ]
        engine.generate_latents(requests)
    finally:
        hook.remove()
    mu, prev, noise = (torch.cat(parts).float() for parts in zip(*caught, strict=True))
    return {"mu": mu, "prev": prev, "noise": noise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=default_checkpoint())
    parser.add_argument("--student", help="a distilled export of --checkpoint: its LocDiT is measured too")
    parser.add_argument("--manifest", default="data/train.jsonl", help="training-split clips (make-dataset)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.checkpoint)
    bundle.model.float()
    engine = Engine(bundle, device="cpu", max_batch=args.clips)
    patches = catch_first_calls(engine, args.manifest, args.clips, args.seconds)
    dit, guidance = bundle.model.locdit, bundle.config.flow.guidance

    def solve(solver: str, steps: int, locdit=dit) -> torch.Tensor:
        midpoint = solver == "midpoint"
        return sample_flow(locdit, patches["mu"], patches["prev"], patches["noise"], steps, guidance, midpoint)

    exact = solve("midpoint", 64)
    scale = exact.pow(2).mean().sqrt()
    runs = [("teacher" if args.student else "model", dit, solver, steps) for solver, steps in SETTINGS]
    if args.student:
        student = load_bundle(args.student).model.float().locdit
        runs += [("student", student, "euler", steps) for steps in STUDENT_STEPS]
    summary = {}
    for name, locdit, solver, steps in runs:
        nfe = steps * (2 if solver == "midpoint" else 1)
        rel_rmse = round(float((solve(solver, steps, locdit) - exact).pow(2).mean().sqrt() / scale), 4)
        summary[f"{name}_{solver}{steps}" if args.student else f"{solver}{steps}"] = rel_rmse
        row = {"model": name, "solver": solver, "steps": steps, "nfe": nfe, "rel_rmse": rel_rmse}
        print(json.dumps(row), flush=True)
    print(json.dumps({"patches": patches["mu"].shape[0], "guidance": guidance, "rel_rmse": summary}))


if __name__ == "__main__":
    main()
