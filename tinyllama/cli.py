"""The `tinyllama` command. Thin: parse arguments, call the library, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tinyllama.errors import TinyllamaError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Pretrain TinyLlama-class models.")
mix_app = typer.Typer(no_args_is_help=True, help="Build and inspect token mixes.")
app.add_typer(mix_app, name="mix")


@mix_app.command("build")
def mix_build(
    spec: Path = typer.Option(..., "--spec", help="The mix spec (TOML)."),
    out: Optional[str] = typer.Option(
        None, "--out", help="Output dir, or a bucket URL s3://... (default: the spec's `out`)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker threads (default: all cores)."),
    in_flight_docs: Optional[int] = typer.Option(
        None, "--in-flight-docs", min=1,
        help="Cap on documents read and not yet written (bounds memory; default: a few batches per worker)."),
    in_flight_mb: Optional[int] = typer.Option(
        None, "--in-flight-mb", min=1,
        help="Cap on MiB of text read and not yet written (bounds memory when documents are huge; "
             "default: 32 MiB, or 4 MiB per worker beyond 8 workers)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ray: bool = typer.Option(False, "--ray", help="Run the build's stages as Ray tasks (pip extra `ray`)."),
    ray_address: Optional[str] = typer.Argument(
        None, metavar="ADDRESS", help="With --ray: the Ray cluster (`auto`, `ray://head:10001`); default a local Ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Same as ADDRESS."),
    band_partitions: Optional[int] = typer.Option(
        None, "--band-partitions", help="With --ray: LSH band tables split into N tasks (default: one per band)."),
    force: bool = typer.Option(
        False, "--force", help="Replace a complete mix of another spec in --out (refused without it)."),
) -> None:
    """Build, or resume, a mix: raw corpora -> token shards + manifests + the locked schedule.
    With --ray [ADDRESS] the same stages run on a Ray cluster and give the same bytes.
    Holds OUT/.lock while it runs; refuses a non-empty --out that is not a mix dir."""
    if ray_address and address and ray_address != address:
        raise typer.BadParameter(f"two Ray addresses given: {ray_address!r} and --address {address!r}")
    address = address or ray_address
    if address and not ray:
        raise typer.BadParameter(f"a Ray address ({address!r}) only makes sense with --ray")
    if band_partitions is not None and not ray:
        raise typer.BadParameter("--band-partitions only makes sense with --ray")
    if ray:
        from tinyllama.data.ray_build import build_mix_ray

        s = build_mix_ray(spec, out, address, threads_per_task=workers or 1, band_partitions=band_partitions,
                          force=force, progress=not quiet, in_flight_docs=in_flight_docs, in_flight_mb=in_flight_mb)
    else:
        from tinyllama.data.build import build_mix

        s = build_mix(spec, out, workers, force=force, progress=not quiet, in_flight_docs=in_flight_docs,
                      in_flight_mb=in_flight_mb)
    if s.get("rebuilt"):
        typer.echo(f"the mix was not intact, so it was rebuilt: {s['rebuilt']}")
    if s["up_to_date"]:
        typer.echo("mix is up to date (nothing to do)")
    else:
        typer.echo(f"built: {s['docs_kept']} docs, {s['tokens']} tokens; files processed {s['files_processed']},"
                   f" resumed {s['files_resumed']} in {s['seconds']:.1f}s")
    from tinyllama.data.mix import Mix

    for line in Mix(s["out"]).epoch_warnings():
        typer.echo(line, err=True)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


@mix_app.command("inspect")
def mix_inspect(
    path: Path = typer.Argument(..., help="A built mix dir."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    branch: Optional[str] = typer.Option(None, "--branch", help="A branch of a family mix (default: the trunk)."),
) -> None:
    """Per-corpus counts, the tokenizer fingerprint and the schedule of a built mix (of a family:
    the tree of trunk and branches, and the trunk's or --branch's schedule)."""
    from tinyllama.data.mix import Mix

    info = Mix(path, branch).inspect()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"mix {info['name']}  seq_len {info['seq_len']}  seed {info['seed']}  dtype {info['dtype']}")
    typer.echo(f"tokenizer sha256 {info['tokenizer_sha256']}  vocab {info['vocab_size']}\n")
    cols = ["files", "docs_read", "docs_filtered", "docs_skipped", "exact_duplicates", "near_duplicates",
            "docs_kept", "docs_holdout", "tokens", "shards", "epochs"]
    rows = [[name] + [f"{c[k]:,}" for k in cols] for name, c in info["corpora"].items()]
    typer.echo(_table(rows, ["corpus", "files", "read", "filtered", "skipped", "exact dup", "near dup",
                             "kept", "holdout", "tokens", "shards", "epochs"]))
    names = sorted({f for c in info["corpora"].values() for f in c.get("filters", {})})
    if names:
        rows = [[name] + [f"{c.get('filters', {}).get(f, 0):,}" if f in c.get("filters", {}) else "-"
                          for f in names] for name, c in info["corpora"].items()]
        typer.echo("\ndropped by filter (the report: Mix.filter_report(corpus)):")
        typer.echo(_table(rows, ["corpus"] + names))
    if info["branches"]:
        typer.echo(f"\nfamily: trunk steps 0..{info['branch_step'] - 1:,}, branch point at step "
                   f"{info['branch_step']:,}")
        for name, b in info["branches"].items():
            stages = "; ".join(f"{s['name']} " + ", ".join(f"{k}={v:g}" for k, v in s["weights"].items())
                               for s in b["stages"])
            typer.echo(f"  -> {name}: steps {info['branch_step']:,}..{b['num_steps'] - 1:,} ({stages})")
    for line in Mix(path, branch).epoch_warnings():
        typer.echo(line)
    view = f" of branch {info['branch']}" if info["branch"] else (" of the trunk" if info["branches"] else "")
    typer.echo(f"\nschedule{view}: {info['num_steps']:,} steps, {info['total_tokens']:,} tokens trained")
    rows = [[s["name"], f"{s['first_step']:,}", f"{s['steps']:,}", f"{s['tokens']:,}", f"{s['tokens_trained']:,}",
             f"{s['batch_tokens']:,}", f"{s['batch_sequences']:,}", f"{s['ramp_tokens']:,}",
             ", ".join(f"{k}={v:g}" for k, v in s["weights"].items())] for s in info["stages"]]
    typer.echo(_table(rows, ["stage", "first step", "steps", "tokens asked", "tokens trained", "batch tokens",
                             "batch seqs", "ramp tokens", "weights"]))


def _check_step(mix, path: Path, step: int, rank: int, world: int) -> None:
    if not 0 <= step < mix.num_steps():
        raise TinyllamaError(f"--step {step}: the schedule of {path} has steps 0..{mix.num_steps() - 1}")
    if not 0 <= rank < world:
        raise TinyllamaError(f"--rank {rank} --world {world}: the rank must be in 0..{world - 1}")


@mix_app.command("sample")
def mix_sample(
    path: Path = typer.Argument(..., help="A built mix dir."),
    step: int = typer.Option(..., "--step", help="Global optimizer step."),
    rank: int = typer.Option(0, "--rank"),
    world: int = typer.Option(1, "--world"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: tokens and corpus of each row."),
    decode: bool = typer.Option(False, "--decode", help="Print each row as text."),
    branch: Optional[str] = typer.Option(None, "--branch", help="A branch of a family mix (default: the trunk)."),
) -> None:
    """The token ids (and source corpus) of rank's slice of the global batch at a step."""
    from tinyllama.data.mix import Mix

    mix = Mix(path, branch)
    _check_step(mix, path, step, rank, world)
    tokens, corpora = mix.batch(step, rank, world)
    samples = mix.samples(step, rank, world)
    if as_json:
        typer.echo(json.dumps({
            "step": step, "rank": rank, "world": world, "seq_len": mix.seq_len,
            "corpus": corpora, "epoch": [e for _, e, _ in samples], "window": [w for _, _, w in samples],
            "tokens": tokens.tolist(),
        }))
        return
    tok = None
    if decode:
        from tinyllama.data.tokenizer import Tokenizer

        tok = Tokenizer(mix.tokenizer_path)
    for i, (row, (corpus, epoch, window)) in enumerate(zip(tokens, samples)):
        head = f"[{i}] {corpus} epoch {epoch} window {window}"
        if tok is not None:
            typer.echo(f"{head}\n{tok.decode(row.tolist(), skip_special_tokens=False)}\n")
        else:
            typer.echo(f"{head}: {' '.join(map(str, row[:16].tolist()))} ...")


@mix_app.command("trace")
def mix_trace(
    path: Path = typer.Argument(..., help="A built mix dir."),
    step: int = typer.Option(..., "--step", help="Global optimizer step."),
    rank: int = typer.Option(0, "--rank"),
    world: int = typer.Option(1, "--world"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: a list of fragments."),
    branch: Optional[str] = typer.Option(None, "--branch", help="A branch of a family mix (default: the trunk)."),
) -> None:
    """Where every document fragment of rank's slice at a step comes from: corpus, input file,
    row, and the token span taken from the document."""
    from tinyllama.data.mix import Mix

    mix = Mix(path, branch)
    _check_step(mix, path, step, rank, world)
    df = mix.trace(step, rank, world)
    if as_json:
        typer.echo(json.dumps({"step": step, "rank": rank, "world": world, "fragments": df.to_dicts()}))
        return
    rows = [[str(r["seq"]), r["corpus"], r["source"], f"{r['row']:,}", f"{r['doc_start']:,}-{r['doc_end']:,}",
             f"{r['seq_start']:,}"] for r in df.iter_rows(named=True)]
    typer.echo(_table(rows, ["seq", "corpus", "source", "row", "doc tokens", "at"]))


@mix_app.command("plot")
def mix_plot(
    path: Path = typer.Argument(..., help="A built mix dir."),
    out: Path = typer.Option(..., "-o", "--out", help="PNG file to write."),
    branch: Optional[str] = typer.Option(None, "--branch", help="A branch of a family mix (default: the trunk)."),
) -> None:
    """Mixture proportions and global batch size over training tokens (a family: every branch,
    the branch point marked)."""
    from tinyllama.data.mix import Mix

    Mix(path, branch).plot(out)
    typer.echo(f"wrote {out}")


@mix_app.command("verify")
def mix_verify(path: Path = typer.Argument(..., help="A built mix dir.")) -> None:
    """Recompute every shard's checksum; names the first corrupt shard."""
    from tinyllama.data.mix import Mix

    Mix(path).verify()
    typer.echo("all shards ok")


@app.command("train")
def train(
    config: Path = typer.Option(..., "--config", help="Train config (TOML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in `out`."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set run.max_steps=50."),
    allow_mix_change: bool = typer.Option(
        False, "--allow-mix-change", help="With --resume: continue on a mix other than the checkpoint's."),
    anneal_from: Optional[Path] = typer.Option(
        None, "--anneal-from", help="Branch a new run (the config's out) from this checkpoint of another run."),
    anneal_steps: int = typer.Option(
        0, "--anneal-steps", help="With --anneal-from: decay the lr to min_lr over N steps."),
) -> None:
    """Train (single process, or under torchrun for many GPUs / nodes). --anneal-from CKPT
    --anneal-steps N: a new run that continues CKPT's weights, optimizer and data stream and
    decays the lr from CKPT's to optim.min_lr over N steps (--resume continues the branch)."""
    from tinyllama.train import train_main

    train_main(str(config), resume=resume, overrides=overrides, allow_mix_change=allow_mix_change,
               anneal_from=str(anneal_from) if anneal_from else None, anneal_steps=anneal_steps)


@app.command("runs")
def runs(
    paths: List[Path] = typer.Argument(..., help="Run dirs (a family: the trunk's and its branches')."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Loss and validation loss over tokens, as PNG."),
) -> None:
    """The tree of runs (trunk -> branches): step, tokens, latest checkpoint, last training loss
    and last validation loss per corpus of each."""
    from tinyllama.train.runs import family_tree, format_tree, plot_runs, tree_json

    tree = family_tree(list(paths))
    typer.echo(json.dumps(tree_json(tree), indent=1) if as_json else format_tree(tree))
    if plot is not None:
        typer.echo(f"wrote {plot_runs(list(paths), plot)}")


@app.command("export")
def export(
    checkpoint: str = typer.Argument(
        ..., help="A run dir, its checkpoints/ dir, or one step-N/ dir (or the same in a bucket: s3://...)."),
    out: Path = typer.Option(..., "--out", help="The Hugging Face model dir to write."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Default: the training mix's tokenizer."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    force: bool = typer.Option(False, "--force", help="Replace a previous export in --out."),
) -> None:
    """A checkpoint (any world size) -> Hugging Face Llama layout that `transformers` loads offline.
    --out must be new or empty (or a previous export, with --force)."""
    from tinyllama.hf import export as export_hf

    typer.echo(f"wrote {export_hf(checkpoint, out, tokenizer, dtype, force=force)}")


@app.command("import-hf")
def import_hf(
    hf_dir: Path = typer.Argument(..., help="A Hugging Face Llama dir (e.g. TinyLlama's)."),
    out: Path = typer.Option(..., "--out", help="The run dir to create (the train config's `out`)."),
    step: int = typer.Option(0, "--step", help="Schedule step the checkpoint stands at."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Start at this stage's first step (e.g. continual)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Train config to check the model against."),
    overrides: List[str] = typer.Option([], "--set", help="Override a train-config key."),
) -> None:
    """An existing Hugging Face checkpoint -> a run that `tinyllama train --resume` continues."""
    from tinyllama.hf import import_hf as run_import

    path = run_import(hf_dir, out, step=step, config=config, overrides=overrides, stage=stage)
    typer.echo(f"wrote {path}; continue with: tinyllama train --config CONFIG --resume (out = {out})")


@app.command("generate")
def generate(
    path: Path = typer.Argument(..., help="A checkpoint or a Hugging Face dir."),
    prompt: str = typer.Option(..., "--prompt"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    temperature: float = typer.Option(0.7, "--temperature", help="0 = greedy."),
    top_k: int = typer.Option(50, "--top-k"),
    top_p: float = typer.Option(0.95, "--top-p"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
    seed: int = typer.Option(0, "--seed"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Sample a continuation of a prompt (top-k / top-p / temperature / repetition penalty)."""
    from tinyllama.eval.generate import generate_main

    typer.echo(generate_main(str(path), prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                             seed, str(tokenizer) if tokenizer else None, device))


@app.command("eval")
def evaluate(
    paths: List[Path] = typer.Argument(..., help="Checkpoints, run dirs or Hugging Face dirs (several: one table)."),
    mixes: List[Path] = typer.Option([], "--mix", help="Perplexity per corpus on this mix's held-out docs."),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", help="lm-eval tasks, e.g. hellaswag,openbookqa,winogrande,arc_challenge,arc_easy,boolq,piqa"
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local copies of the tasks' datasets."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Extra lm-eval task YAML(s)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N examples per task."),
    out: Optional[Path] = typer.Option(None, "--out", help="Append one row per run (.csv or .jsonl)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Accuracy vs tokens seen, as PNG."),
    compare: List[str] = typer.Option([], "--compare", help="Published model-card rows to compare with."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer"),
    as_json: bool = typer.Option(False, "--json"),
    corpus: List[str] = typer.Option([], "--corpus", help="Perplexity: only these corpora (repeatable)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    batch_size: int = typer.Option(8, "--batch-size"),
    dtype: str = typer.Option("float32", "--dtype"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Per-corpus perplexity on held-out documents (--mix: one table, a row per run) and/or the
    model cards' zero-shot table through lm-evaluation-harness (--tasks; offline, from local
    dataset files). --json prints one JSON document."""
    if not mixes and tasks is None:
        raise TinyllamaError("eval: pass --mix DIR (perplexity) and/or --tasks LIST (lm-eval)")
    if len(mixes) > 1:
        raise TinyllamaError(f"eval: --mix given {len(mixes)} times ({', '.join(map(str, mixes))}): pass one mix "
                             "dir (its corpora are the table's columns); run eval once per mix")
    if mixes and tasks is not None and out is not None:
        raise TinyllamaError("eval: --out takes the rows of one table: pass it with --mix or with --tasks, not both")
    docs: dict = {}
    if mixes:
        from tinyllama.eval.perplexity import eval_main

        text = eval_main(paths, mixes[0], as_json, corpus or None, seq_len, batch_size, device, out=out)
        if as_json:
            docs["perplexity"] = json.loads(text)
        else:
            typer.echo(text)
    if tasks is not None:
        from tinyllama.eval.harness import harness_main

        harness_main(paths, [t for t in tasks.split(",") if t], as_json=as_json, compare_with=compare or None,
                     plot=plot, echo=(lambda s: docs.setdefault("tasks", []).append(json.loads(s))) if as_json
                     else typer.echo, batch_size=batch_size, dtype=dtype, device=device, limit=limit,
                     include_path=include_path, data_dir=data_dir, out=out,
                     tokenizer=str(tokenizer) if tokenizer else None)
    if as_json:  # one document: the list of the runs' results, or both lists by kind
        typer.echo(json.dumps(docs if len(docs) > 1 else next(iter(docs.values())), indent=2))


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the demo schedule)."),
    workers: Optional[int] = typer.Option(None, "--workers"),
    overrides: List[str] = typer.Option([], "--set", help="Override a train-config key."),
) -> None:
    """The whole pipeline on the bundled sample data, on a CPU: build, train, plot, export, generate, eval."""
    from tinyllama.demo import run_demo

    run_demo(out, steps, workers, overrides=overrides, echo=typer.echo)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: library errors become one clear line on stderr and exit status 1."""
    try:
        app(args=argv, standalone_mode=False)
    except TinyllamaError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted (rerun the same command to resume)", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
