"""Run every benchmark and write BENCHMARKS.md (tables) and results/benchmarks/*.json.

Each speed measurement runs in its own process (so its peak memory is its own) with the same
OMP_NUM_THREADS; ratios measured in one run on one machine are what the tables report.
Usage: OMP_NUM_THREADS=1 DLLM_RL_CACHE=... python benchmarks/run_all.py [--skip-accuracy]
(benchmarks/skip_rows.py trains, so it runs on its own; its last JSON gets a section here.)"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MODELS, ROOT, machine, md_table, read_json, write_json  # noqa: E402
from dllm_rl.atomic import atomic_write_text  # noqa: E402

UPDATES = [(1, "iteration"), (2, "iteration"), (2, "rollout")]


def speed(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), *args], check=True,
                         capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_section(data: dict) -> str:
    m = data["machine"]
    parts = [f"Machine: {m['cpus']} CPUs shared with other jobs (load average {m['load_avg_1m']} at start, "
             f"{data['machine_end']['load_avg_1m']} at end), OMP_NUM_THREADS={m['omp_num_threads']}, torch {m['torch']}, "
             f"{m['date']}. Random-init weights (speed does not depend on them); fixed L/2-step schedule."]
    rows = []
    for s in data["sampler"]:
        for label in ("greedy", "t0.9"):
            r = s[label]
            rows.append([s["model"], f"{s['params'] / 1e6:.2f}M", f"{s['batch']}x({s['prompt']}+{s['gen_length']})", label,
                         f"{r['nfe_per_sample']:.0f}", f"{r['tokens_per_s']:.0f}", f"{s['forward_tokens_per_s']:.0f}",
                         f"{r['bound_tokens_per_s']:.0f}", f"**{r['ratio_to_bound']:.2f}**", f"{s['peak_rss_mb']:.0f}"])
    parts.append("### Sampler vs forward-only bound\n\nBound = generated tokens/s if the sampler did nothing but its NFE "
                 "plain batched forward passes (measured at the same [batch, prompt + L] shape).\n\n" + md_table(
                     ["model", "params", "batch x (prompt+L)", "decoding", "NFE/sample", "sampler gen tok/s",
                      "forward tok/s (processed)", "bound gen tok/s", "sampler / bound", "peak RSS MB"], rows))
    rows = []
    for u in data["update"]:
        rows.append([u["model"], u["mu"], u["masks_per"], u["M"], f"{u['grad_passes_per_sample']:.0f}",
                     f"{u['nograd_passes_per_sample']:.0f}", f"{u['forward_equivalents_per_sample']:.0f}",
                     u["flop_model_fe"], u["flop_model_with_old_ref_fe"], u["public_trainer_fe"],
                     f"**{u['forward_equivalents_per_sample'] / u['flop_model_with_old_ref_fe']:.2f}**",
                     f"{u['backward_over_forward']:.2f}", f"**{u['measured_over_predicted']:.2f}**", f"{u['peak_rss_mb']:.0f}"])
    parts.append("### One ESPO policy update against the FLOP model\n\nPasses are counted per sample with a forward "
                 "hook (grad passes get one backward each); forward-equivalents (fe) = no-grad + 3 x grad passes "
                 "(backward = 2 forwards, Kaplan et al.). Paper model: 6 mu M fe per sample for the update "
                 "(2ND(K + 6 mu M) in all); with old/ref: plus the old-policy (none at mu=1, iteration 0 reuses the "
                 "current ELBO) and reference ELBO passes this trainer runs; public trainers: old and ref for every "
                 "iteration (4 mu M extra forwards). Predicted time = fe x measured batched forward time. "
                 "M=2 coupled, beta=0.01.\n\n" + md_table(
                     ["model", "mu", "masks per", "M", "grad passes", "no-grad passes", "measured fe", "paper 6muM",
                      "+ old/ref (ours)", "public trainers", "measured / ours", "bwd/fwd time", "time measured / predicted",
                      "peak RSS MB"], rows))
    rows = []
    for s in data["sampler"]:
        for u in (u for u in data["update"] if u["model"] == s["model"]):
            k = s["t0.9"]["nfe_per_sample"]
            t_roll, t_upd = s["t0.9"]["seconds"] * u["forward_s"] / s["forward_s"], u["seconds"]
            fe = k + u["forward_equivalents_per_sample"]
            rows.append([s["model"], u["mu"], u["masks_per"], f"{k:.0f}", f"{fe:.0f}", f"{k + 6 * u['mu'] * u['M']:.0f}",
                         f"{fe / (k + 6 * u['mu'] * u['M']):.2f}", f"{t_roll / (t_roll + t_upd):.2f}",
                         f"**{(s['t0.9']['seconds'] + t_upd) / (fe * s['forward_s']):.2f}**"])
    parts.append("### One RL step (rollout at temperature 0.9 + update), per sample\n\nStep time / (fe x batched forward "
                 "time); rollout share is of wall-clock time.\n\n" + md_table(
                     ["model", "mu", "masks per", "K", "fe (K + update)", "paper K + 6muM", "fe / paper", "rollout share",
                      "time / predicted"], rows))
    return "\n\n".join(parts)


def accuracy_section(data: dict) -> str:
    m = data["machine"]
    rows = []
    for task, variants in data["tasks"].items():
        for r in variants:
            rows.append([task, r["variant"], r["gen_length"], f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}",
                         f"{100 * r['accuracy_delta']:+.1f}", f"{r['nfe_per_sample']:.1f}", f"**{r['nfe_ratio']:.2f}**",
                         f"{r['time_ratio']:.2f}", f"{r['same_text_frac']:.2f}", r["n"]])
    return (f"Greedy decoding of the cached tiny base checkpoints (the ESPO starting point) on the {data['split']} split; "
            "NFE = each row's own forward passes (rows leave the batch when done). \"budget f x L/2 = S steps\" caps "
            "every row at S passes: each step commits at least what the fixed S-step schedule would, and everything "
            "above the threshold. \"prompt cache\": passes after the first run over the completion only and reuse "
            "the prompt's keys and values from the last full pass (time ratio = its saving). "
            f"Load average {m['load_avg_1m']}, "
            f"OMP_NUM_THREADS={m['omp_num_threads']}.\n\n" + md_table(
                ["task", "decoding", "L", "accuracy %", "Δ vs L/2", "NFE/sample", "NFE / L/2 baseline", "time ratio",
                 "same text as baseline", "n"], rows))


# (task shown, results folder, grid that fills it, variants in table order)
RL_SECTIONS = [
    ("Sudoku", "sudoku-espo", "cheap-rollouts.yaml",
     ["", "threshold-0.9", "threshold-0.8", "threshold-0.9-budget5", "mu2-iteration", "mu2-rollout"]),
    ("Countdown", "countdown-espo", "cheap-rollouts-countdown.yaml", ["", "threshold-0.9-budget3"]),
    ("Sudoku, ELBO masks per rollout batch vs per policy iteration", "sudoku-masks", "masks-per-rollout.yaml",
     ["mu2-iteration", "mu2-rollout"]),
]


def rl_section(task: str, folder_name: str, grid: str, variants: list[str]) -> str | None:
    """The options inside RL, from the runs of `dllm-rl sweep --grid experiments/<grid>`: held-out
    accuracy (fixed L/2 greedy protocol) and cost per variant, mean ± std over seeds, with the first
    variant as the reference of the Δ column. The whole section, titled, or None without runs."""
    import statistics

    from dllm_rl.results import load_results, validation_mean

    folder = ROOT / "results" / folder_name
    runs = [r for r in (load_results(folder) if folder.is_dir() else []) if (r.get("label") or "") in variants]
    if not runs:
        return None

    def ms(values, scale=1.0, digits=1):
        values = [v * scale for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"

    def acc(r):
        return next(iter(r["metrics"].values()))["accuracy"]

    plain = [acc(r) for r in runs if (r.get("label") or "") == variants[0]]
    rows = []
    for label in variants:
        mine = sorted((r for r in runs if (r.get("label") or "") == label), key=lambda r: r["seed"])
        if not mine:
            continue
        tr = [r["training"] for r in mine]
        rows.append([label or "fixed L/2 rollouts, mu 1 (ESPO preset)", len(mine), ms([acc(r) for r in mine], 100),
                     f"{100 * (statistics.fmean(acc(r) for r in mine) - statistics.fmean(plain)):+.1f}" if plain else "-",
                     ms([validation_mean(r) for r in mine], 100),
                     ms([statistics.fmean(c["reward"] for c in t["curve"][-10:]) for t in tr], 1, 3),
                     f"**{statistics.fmean(t['rollout_nfe_per_sample'] / (t['gen_length'] // 2) for t in tr):.2f}**",
                     ms([r["timing"]["train_s"] / t["steps"] for r, t in zip(mine, tr)], 1, 2)])
    base = statistics.fmean(next(iter(r["base"].values()))["accuracy"] for r in runs)
    seeds = sorted({r["seed"] for r in runs})
    reference = variants[0] or "fixed"
    return (f"## Cheaper rollouts and updates inside RL: {task} ({len(seeds)} seeds)\n\n"
            f"ESPO on {task.split(',')[0]}, tiny model, {tr[0]['steps']} RL steps of {tr[0]['rollouts_per_step']} rollouts, seeds "
            f"{seeds}; base {100 * base:.1f}. Test accuracy is always scored with the fixed "
            "L/2-step greedy protocol, so it compares the trained models, not the decoders. Produced by "
            f"`dllm-rl sweep --grid experiments/{grid}` (files in results/{folder_name}); curves: "
            f"`dllm-rl compare results/{folder_name} --plots DIR --plot-metric reward --plot-metric val_accuracy "
            "--plot-metric rollout_nfe`. Seconds per step were measured while two to four runs shared the two "
            "cores: compare NFE, not seconds, across rows.\n\n" + md_table(
                ["rollouts / updates", "seeds", "test accuracy %", f"Δ vs {reference}", "mean validation accuracy % (steps 10-60)",
                 "reward, last 10 steps", "rollout NFE / L/2", "s / step"], rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-speed", action="store_true", help="reuse results/benchmarks/speed.json")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if not a.skip_speed:
        data = {"machine": machine(), "sampler": [], "update": []}
        for name in MODELS:
            data["sampler"].append(speed("--model", name, "--part", "sampler", "--repeats", str(a.repeats)))
            for mu, per in UPDATES:
                data["update"].append(speed("--model", name, "--part", "update", "--mu", str(mu), "--masks-per", per,
                                            "--repeats", str(a.repeats)))
            print(f"speed: {name} done", flush=True)
        data["machine_end"] = machine()
        write_json("speed", data)
    if not a.skip_accuracy:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "threshold_accuracy.py")], check=True)
    sections = ["# Benchmarks\n\nGenerated by `python benchmarks/run_all.py` (JSON in results/benchmarks/). "
                "Ratios measured in one run on one machine are what count; absolute seconds vary with the load."]
    speed_data, acc_data = read_json("speed"), read_json("threshold_accuracy")
    if speed_data:
        sections.append("## Speed: sampler, policy update, FLOP model\n\n" + speed_section(speed_data))
    scale = read_json("sampler_scale")
    if scale:
        from benchmarks.sampler_scale import section as scale_section
        sections.append(scale_section(scale))
    from benchmarks.gpu import section as gpu_section
    sections.append(gpu_section(read_json("gpu")))
    if acc_data:
        sections.append("## Cheaper rollouts: accuracy of threshold decoding (tiny model)\n\n" + accuracy_section(acc_data))
    for task, *spec in RL_SECTIONS:
        rl = rl_section(task, *spec)
        if rl:
            sections.append(rl)
    skip = read_json("skip_rows")
    if skip:
        from benchmarks.skip_rows import section as skip_section
        sections.append(skip_section(skip))
    atomic_write_text(ROOT / "BENCHMARKS.md", "\n\n".join(sections) + "\n")
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
