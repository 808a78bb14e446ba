"""Writes the tuning notebooks (outputs stripped). Run after editing the cells below: python notebooks/build_notebooks.py"""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

SETUP = '''import pathlib, sys
ROOT = pathlib.Path.cwd()
while not (ROOT / "pyproject.toml").exists() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT))
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Markdown, Image, display
from adaptive_spec.traces.format import read_traces
from adaptive_spec.policy.file import load_policy_file
TRACES = ROOT / "notebooks" / "data" / "traces_small.jsonl"
POLICY = ROOT / "policies" / "qwen2.5-coder-cpu.json"
traces = read_traces(TRACES)
cost = load_policy_file(POLICY).cost
print(f"{len(traces)} traces, classes: {sorted({t.request_class for t in traces})}")
print(f"cost model: {cost.hardware}; draft step / target step c = {cost.draft_cost_ratio:.2f}")'''

KNOW = [
    ("md", "# Know your α\n\nAcceptance per request class and what each drafting choice would gain, from exact greedy "
           "traces of the reference pair (a small committed sample of Spec-Bench; run `adaptive-spec profile` on "
           "your own prompts to get yours). Everything here is replay, priced with the calibrated cost model: it "
           "runs in seconds, no model needed."),
    ("code", SETUP),
    ("md", "## α per class, with 90% credible intervals\n\nα is the share of positions where the drafter's next "
           "token is the target's. For prompt lookup it is measured where lookup has a proposal at all "
           "(*coverage* is how often that is)."),
    ("code", '''from adaptive_spec.traces import report
profiles = report.profile_traces(traces, cost, ks=(1, 2, 3, 4, 6, 8, 12, 16))
display(Markdown(report.to_markdown(profiles, cost, title="Profile")))'''),
    ("code", '''out = ROOT / "notebooks" / "_out"
for png in report.plot(profiles, out):
    display(Image(filename=str(png)))'''),
    ("md", "## Break-even: how good must a drafter be?\n\nThe constant α at which drafting k tokens is exactly as "
           "fast as plain decoding on this machine. Below it, speculation is a loss."),
    ("code", '''ks = list(range(1, 13))
fig, ax = plt.subplots(figsize=(6, 3.5))
for drafter in ("model", "lookup"):
    ax.plot(ks, [cost.break_even_alpha(drafter, k) for k in ks], marker="o", label=drafter)
ax.set_xlabel("k (draft tokens per round)"); ax.set_ylabel("break-even α"); ax.set_ylim(0, 1); ax.legend()
ax.set_title("Break-even acceptance rate")
fig.tight_layout(); plt.show()
print({k: round(cost.break_even_alpha("model", k), 3) for k in (1, 2, 4, 8)})'''),
    ("md", "## Speedup as a function of α and k (Leviathan et al., priced here)"),
    ("code", '''import numpy as np
alphas = np.linspace(0.05, 0.95, 19)
fig, ax = plt.subplots(figsize=(6, 3.5))
for k in (1, 2, 4, 8):
    ax.plot(alphas, [cost.expected_speedup("model", [a], k) for a in alphas], label=f"k={k}")
ax.axhline(1, color="gray", ls="--"); ax.set_xlabel("α"); ax.set_ylabel("expected speedup"); ax.legend()
for p in profiles:
    ax.axvline(p.drafters["model"].alpha, color="black", alpha=0.15)
ax.set_title("Model draft: expected speedup (vertical lines: classes' α)")
fig.tight_layout(); plt.show()'''),
    ("md", "## What to turn off\n\nClasses where no fixed drafting choice beats plain decoding by 2%: the adaptive "
           "controller will mostly decode them plainly."),
    ("code", '''off = [p.request_class for p in profiles if max(d.best[1] for d in p.drafters.values()) < 1.02]
print("turn speculation off for:", off or "no class")
for p in profiles:
    print(f"{p.request_class:15s} -> {p.recommendation}")'''),
]

TUNE = [
    ("md", "# Tune the policy\n\nReplay fixed configurations, per-class choices, the adaptive controller and the "
           "per-request oracle on the same traces; sweep the controller's knobs; write a policy file. Exact replay "
           "(tokens and decisions) priced by the calibrated cost model."),
    ("code", SETUP),
    ("code", '''from adaptive_spec.policy.base import FixedPolicy, PerClassPolicy
from adaptive_spec.policy.controller import ControllerConfig, ClassSettings
from adaptive_spec.policy import train as T
from adaptive_spec.traces.simulate import simulate
train_set, test_set = T.split_by_class(traces, held_out_share=0.5, seed=0)
plain = simulate(test_set, FixedPolicy(), cost)
print(len(train_set), "training traces,", len(test_set), "held out")'''),
    ("md", "## Fixed vs per-class vs adaptive vs oracle (held-out traces)"),
    ("code", '''fixed = {p.name: simulate(test_set, p, cost) for p in T.FIXED_CANDIDATES[1:]}
best_name = max(fixed, key=lambda n: fixed[n].throughput())
train_runs = {p.name: simulate(train_set, p, cost) for p in T.FIXED_CANDIDATES[1:]}
classes = sorted({t.request_class for t in traces})
per_class = PerClassPolicy({c: next(p for p in T.FIXED_CANDIDATES if p.name == max(train_runs, key=lambda n: train_runs[n].throughput(c)))
                            for c in classes}, FixedPolicy("hybrid", 8, 0.7))
per_class_run = simulate(test_set, per_class, cost)
config = load_policy_file(POLICY).controller
policy = T.adaptive(cost, config)
simulate(train_set, policy, cost)               # warm the store on the training half
adaptive_run = simulate(test_set, policy, cost)
oracle = T.per_request_oracle(test_set, cost)
oracle_tps = sum(v[2] for v in oracle.values()) / sum(v[1] for v in oracle.values())
rows = {"best single fixed (" + best_name + ")": fixed[best_name].throughput(),
        "per-class fixed (chosen on train)": per_class_run.throughput(),
        "adaptive (trained policy)": adaptive_run.throughput(),
        "per-request oracle": oracle_tps}
base = plain.throughput()
for name, tps in rows.items():
    print(f"{name:45s} {tps / base:.3f}x target-only")'''),
    ("md", "## Sweep: the model draft's confidence threshold (all classes)"),
    ("code", '''thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
scores = []
for t in thresholds:
    c = config.model_copy(update={"default": T.with_setting(config.default, "model.threshold", t), "classes": {}})
    scores.append(T.warm_throughput(test_set, cost, c, warm=train_set) / base)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(thresholds, scores, marker="o"); ax.set_xlabel("threshold"); ax.set_ylabel("speedup (one setting for all classes)")
fig.tight_layout(); plt.show()'''),
    ("md", "## Sweep: how much the class estimate weighs against the request's own rounds, and the estimator's half-life"),
    ("code", '''from adaptive_spec.stats import AlphaEstimator
from adaptive_spec.policy.controller import AdaptivePolicy
def run(config, half_life=20_000.0):
    p = AdaptivePolicy(cost, AlphaEstimator(pair_id=cost.pair_id, half_life_tokens=half_life), config)
    simulate(train_set, p, cost)
    return simulate(test_set, p, cost).throughput() / base
for w in (2.0, 8.0, 32.0, 128.0):
    print(f"prior_weight {w:6.1f}: {run(config.model_copy(update={'prior_weight': w})):.3f}x")
for h in (500.0, 5_000.0, 50_000.0):
    print(f"half-life {h:8.0f} tokens: {run(config, h):.3f}x")'''),
    ("md", "## Regret per class against the per-request oracle"),
    ("code", '''regret = {}
for c in classes:
    ids = {t.request_id for t in test_set if t.request_class == c}
    o = sum(v[2] for k, v in oracle.items() if k in ids) / sum(v[1] for k, v in oracle.items() if k in ids)
    regret[c] = 1 - adaptive_run.throughput(c) / o
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(list(regret), [100 * v for v in regret.values()]); ax.set_ylabel("regret vs per-request oracle (%)")
ax.tick_params(axis="x", rotation=45); fig.tight_layout(); plt.show()'''),
    ("md", "## Write a policy file\n\nFit a shared setting, then per-class departures from it where they gain more "
           "than `class_margin` (3%) on the class's training traces, on the training half, and save them (here to a "
           "scratch folder; `adaptive-spec train-policy` does the same from the command line). Tuned freely "
           "(`class_margin=0`), the per-class knobs fit the noise of a few requests per class."),
    ("code", '''from adaptive_spec.policy.file import PolicyFile, load_policy_file
report = T.train(traces, cost, held_out_share=0.5, seed=0)
doc = PolicyFile(name="notebook", pair_id=cost.pair_id, cost=cost, controller=report.config)
path = ROOT / "notebooks" / "_out" / "notebook-policy.json"
path.parent.mkdir(exist_ok=True)
path.write_text(doc.to_json())
print("held-out:", {r["class"]: round(r["adaptive_speedup"], 2) for r in report.rows})
print("written and re-read:", load_policy_file(path, cost.pair_id).name)'''),
]


def build(cells, name):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    build(KNOW, "01_know_your_alpha.ipynb")
    build(TUNE, "02_tune_policy.ipynb")
