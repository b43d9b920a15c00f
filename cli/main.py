"""``sidyp-prod``: a thin Typer layer over :mod:`sidyp_prod.api`. Commands parse and hand over."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import typer
from typer.core import TyperCommand, TyperGroup

from sidyp_prod.config import INPUT, MODEL, PERFORMANCE, PRESET_CHOICES, SiDyPConfig

# Nothing is ever fetched from a model hub; set before transformers/tokenizers are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _NoFlagType:
    """On/off options take no value: their help shows none (Typer would print ``<bool>``)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_NoFlagType, TyperCommand):
    pass


class Group(_NoFlagType, TyperGroup):
    pass


app = typer.Typer(
    name="sidyp-prod",
    help="Clean LLM-generated labels with SiDyP.",
    no_args_is_help=True,
    add_completion=False,
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Importing the config is cheap (no torch); the CLI defaults are the library's defaults.
D = SiDyPConfig()

# Help panels: the training settings' come with the configuration (config.py).
OUTPUT, BACKEND, RAY = "Output", "Model runtime", "--engine ray"


def _option(*names: str, help: str, panel: str | None = None, **kwargs: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kwargs)


def _flag(*names: str, help: str, panel: str | None = None) -> Any:
    """An on/off option: no value shown in the help."""
    return typer.Option(*names, help=help, rich_help_panel=panel, metavar="")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"sidyp-prod {version('sidyp-prod')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version,
                     is_eager=True, metavar=""),
    ] = False,
) -> None:
    """Clean LLM-generated labels with SiDyP."""


TextField = Annotated[str, _option(help="Field (column) holding the text.", panel=INPUT)]
LabelField = Annotated[
    str, _option(help="Field (column) holding the LLM label (null or empty = refused).",
                 panel=INPUT)
]
IdField = Annotated[
    str, _option(help="Field (column) holding the row id (row number if absent).", panel=INPUT)

]
InputFormat = Annotated[
    str | None,
    _option(help="Corpus format: jsonl, csv, tsv, parquet or datasets (a save_to_disk "
            "directory); default: from the name (.jsonl[.gz|.zst], .csv, .tsv, .parquet, "
            "a directory).", panel=INPUT),
]
Rejects = Annotated[
    Path | None,
    _option(help="Where rejected rows go (default: OUT.rejects.jsonl next to the output).",
            panel=OUTPUT),
]
Strict = Annotated[bool, _flag("--strict", help="Stop at the first bad row (exit code 2).",
                               panel=INPUT)]
Quiet = Annotated[bool, _flag("--quiet", "-q", help="No progress bars.", panel=OUTPUT)]
JsonOut = Annotated[bool, _flag("--json", help="Print the summary as JSON.", panel=OUTPUT)]
Encoder = Annotated[
    str | None,
    _option(help="Classifier encoder: a local Hugging Face checkpoint directory or a model id "
            "in the local cache (BERT, MPNet, RoBERTa, DeBERTa-v2, XLM-R; default: the packaged "
            "all-MiniLM-L6-v2). Never downloaded.", panel=MODEL),
]
EmbeddingModel = Annotated[
    str | None,
    _option(help="Sentence-embedding model of the neighbour prior (the paper uses a separate, "
            "larger one): a local checkpoint directory or a cached model id, as --encoder "
            "(default: the encoder's own pretrained layers). Stored and exported with the "
            "bundle.", panel=MODEL),
]
Device = Annotated[
    str, _option(help="Where to train: auto (CUDA when available), cpu, cuda, cuda:N.",
                 panel=PERFORMANCE)
]
TrustedField = Annotated[
    str | None,
    _option(help="Field where a random sample of rows carries a person's label: never trained "
            "on, it checks that label changes fix more than they break (stricter changes, or "
            "none, when they do not) and corrects the noise calibration.", panel=INPUT),
]
MaxTrainRows = Annotated[
    int | None,
    _option(help="Train on a sample of this many rows drawn per LLM label (every class kept, "
            "chosen by --seed; 0: every row); the rest are refined as new rows.", panel=INPUT),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _log(message: str) -> None:
    typer.echo(message, err=True)


def _fields(text_field: str, label_field: str, id_field: str):
    from sidyp_prod.corpus import FieldNames

    return FieldNames(text=text_field, label=label_field, id=id_field)


def _report(summary, as_json: bool) -> None:
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.to_text())


def _with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` (whose ``**settings`` takes them) an option for every SiDyPConfig
    field: name, type, default, help and panel come from the configuration itself."""
    hints = get_type_hints(SiDyPConfig)
    options = []
    for f in fields(SiDyPConfig):
        kind = f.metadata.get("cli_type") or hints[f.name]
        if "choices" in f.metadata:
            kind = Literal[f.metadata["choices"]]  # type: ignore[valid-type]
        name = "--" + f.name.replace("_", "-")
        if kind is bool:
            option = _flag(f"{name}/--no-{name[2:]}", help=f.metadata["help"],
                           panel=f.metadata["panel"])
        else:
            option = _option(name, help=f.metadata["help"], panel=f.metadata["panel"])
        default = str(f.default) if kind is str and f.default is not None else f.default
        options.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                         default=default, annotation=Annotated[kind, option]))
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*own, *options])  # type: ignore
    return command


@app.command(cls=Command)
@_with_config_options
def train(
    ctx: typer.Context,
    corpus: Annotated[
        Path, typer.Argument(help="Corpus with text and LLM labels: JSONL, CSV, TSV, Parquet or "
                             "a datasets directory.")
    ],
    out: Annotated[
        Path, _option("--out", "-o", help="Directory of the model bundle (must not exist, "
                      "unless --overwrite).", panel=OUTPUT)
    ],
    refined_out: Annotated[
        Path | None,
        _option(help="Also write the corpus's own refined labels here (.jsonl, .csv, .tsv or "
                ".parquet): the best labels for the training corpus (classifiers that never "
                "saw each row's label).", panel=OUTPUT),
    ] = None,
    labels: Annotated[
        str | None,
        _option(help="Label set: comma list or a file (one per line), else from the data.",
                panel=INPUT),
    ] = None,
    encoder: Encoder = None,
    embedding_model: EmbeddingModel = None,
    device: Device = "auto",
    text_field: TextField = "text",
    label_field: LabelField = "label",
    id_field: IdField = "id",
    trusted_field: TrustedField = None,
    input_format: InputFormat = None,
    rejects: Rejects = None,
    strict: Strict = False,
    overwrite: Annotated[bool, _flag("--overwrite/--no-overwrite",
                                     help="Replace an existing bundle.", panel=OUTPUT)] = False,
    export: Annotated[
        bool, _flag("--export/--no-export", help="Also export the ONNX graphs into the bundle.",
                    panel=OUTPUT)
    ] = True,
    preset: Annotated[
        Literal[PRESET_CHOICES],  # type: ignore[valid-type]
        _option(help="Starting settings, which the options below override: 'quality' fine-tunes "
                "every encoder layer of three branches (the paper's recipe; slower on a CPU), "
                "'auto' picks it when training on a GPU.", panel=MODEL),
    ] = "auto",
    quiet: Quiet = False,
    as_json: JsonOut = False,
    **settings: Any,
) -> None:
    """Train SiDyP on a corpus and write a model bundle; --refined-out also writes the corpus's
    own refined labels (better than a `refine` of the training corpus)."""
    from sidyp_prod import api
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError, parse_label_set

    try:
        given = {name: value for name, value in settings.items() if _given(ctx, name)}
        if "trainable_layers" in given:
            given["trainable_layers"] = _layers(given["trainable_layers"])
        preset, config = api.training_config(preset, device, **given)
        config.validate()
        if not quiet:
            _log(f"preset {preset}")
        summary = api.train(
            corpus,
            out,
            config,
            fields=_fields(text_field, label_field, id_field),
            labels=parse_label_set(labels),
            encoder=encoder,
            embedding_model=embedding_model,
            rejects=rejects,
            strict=strict,
            refined_out=refined_out,
            overwrite=overwrite,
            export=export,
            progress=not quiet,
            log=None if quiet else _log,
            device=device,
            input_format=input_format,
            trusted_field=trusted_field,
        )
    except (InputError, ValueError, FileNotFoundError, BundleError, RuntimeError) as exc:
        _fail(str(exc))
    _report(summary, as_json)


# refine's options that only its training (no --model) reads.
TRAINING_ONLY = ("save_model", "max_train_rows", "encoder", "embedding_model", "device",
                 "trusted_field", "seed", "preset", "overwrite")


RAY_ONLY = ("address", "workers", "gpus_per_worker", "cpus_per_worker", "output_format")
ONNX_EXPORT_ONLY = ("int8", "fp16", "atol", "validate", "calibration", "text_field",
                    "input_format")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or from the environment)."""
    source = ctx.get_parameter_source(name)
    # Compared by name: Typer ships its own copy of click's ParameterSource.
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _refuse_unused(ctx: typer.Context, names: Sequence[str], applies: str,
                   otherwise: str = "") -> None:
    """Exit 2 naming the options the user set that do not apply here (``applies``: when they
    do; ``otherwise``: what else to do), rather than run without them."""
    params = {param.name: param for param in ctx.command.params}
    stray = ["/".join([*params[name].opts, *params[name].secondary_opts])
             for name in names if _given(ctx, name)]
    if stray:
        one = len(stray) == 1
        _fail(f"{', '.join(stray)} {'applies' if one else 'apply'} only {applies}: drop "
              f"{'it' if one else 'them'}" + (f", or {otherwise}" if otherwise else ""))


def _layers(value: str) -> int | str:
    """``--trainable-layers``: a number of layers or 'all'."""
    if value.strip().lower() == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--trainable-layers {value!r}: a number of layers or 'all'") from None


@app.command(cls=Command)
def refine(
    ctx: typer.Context,
    corpus: Annotated[
        list[Path],
        typer.Argument(help="Corpus to refine: JSONL ('.jsonl.gz', '.jsonl.zst' too), CSV, TSV, "
                       "Parquet or a datasets directory; with --engine ray, any number of "
                       "JSONL files, globs and directories. For the corpus the bundle was "
                       "trained on, `train --refined-out` (or refine without --model) gives "
                       "better labels."),
    ],
    model: Annotated[
        Path | None,
        _option("--model", "-m", help="A trained bundle to apply. Without it, refine trains on "
                "CORPUS first (its rows get labels from classifiers that never saw them) and "
                "keeps the bundle (--save-model).", panel=MODEL),
    ] = None,
    out: Annotated[
        str | None,
        _option("--out", "-o", help="Output: .jsonl, .csv, .tsv, .parquet, or '-' for stdout; with "
                "--engine ray, a new directory of shards and a manifest (default: "
                "CORPUS.refined.jsonl beside the input).", panel=OUTPUT),
    ] = None,
    save_model: Annotated[
        Path | None,
        _option(help="Without --model: where the trained bundle is kept (default: "
                "CORPUS.sidyp-model/ beside the input).", panel=MODEL),
    ] = None,
    max_train_rows: MaxTrainRows = D.max_train_rows,
    encoder: Encoder = None,
    embedding_model: EmbeddingModel = None,
    device: Device = "auto",
    trusted_field: Annotated[
        str | None,
        _option(help="Without --model: a field with a person's label on a random sample of "
                "rows, as train --trusted-field.", panel=INPUT),
    ] = None,
    seed: Annotated[int, _option(help="Without --model: the training seed.", panel=MODEL)] = (
        D.seed),
    preset: Annotated[
        Literal[PRESET_CHOICES],  # type: ignore[valid-type]
        _option(help="Without --model: the training settings, as train --preset.", panel=MODEL),
    ] = "auto",
    overwrite: Annotated[
        bool, _flag("--overwrite/--no-overwrite", help="Without --model: replace an existing "
                    "--save-model bundle.", panel=OUTPUT)
    ] = False,
    backend: Annotated[
        Literal["onnx", "torch"],
        _option(help="Runtime: ONNX Runtime, or the PyTorch reference.", panel=BACKEND),
    ] = "onnx",
    triton_url: Annotated[
        str | None,
        _option(help="Run the models on this Triton server: grpc://HOST:8001 or "
                "http://HOST:8000 (repository from `export --triton-repo`).", panel=BACKEND),
    ] = None,
    triton_retry_seconds: Annotated[
        float, _option(help="How long to retry an unreachable Triton server.", panel=BACKEND)
    ] = 120.0,
    precision: Annotated[
        Literal["auto", "fp32", "int8", "fp16"],
        _option(help="Encoder graph: auto = int8 on CPUs (per-row scales: batch-independent; "
                "close calls run again in fp32: 99.6-100% same labels on SemEval), fp32 on "
                "GPUs; fp16 (export --fp16) for GPUs.",
                panel=BACKEND),
    ] = "auto",
    text_field: TextField = "text",
    label_field: LabelField = "label",
    id_field: IdField = "id",
    input_format: InputFormat = None,
    rejects: Rejects = None,
    strict: Strict = False,
    max_reject_fraction: Annotated[
        float, _option(help="Exit with code 3 when more than this fraction of the rows is "
                       "rejected (the output is still written).", panel=INPUT, min=0.0, max=1.0)
    ] = 0.5,
    chunk_size: Annotated[int, _option(help="Rows per streamed chunk.", panel=PERFORMANCE)] = 1024,
    resume: Annotated[bool, _flag("--resume", help="Continue a killed run (from the beginning "
                                  "when there is nothing to resume).", panel=OUTPUT)] = False,
    engine: Annotated[
        Literal["local", "ray"],
        _option(help="This process, or Ray Data (local or a cluster).", panel=PERFORMANCE),
    ] = "local",
    address: Annotated[
        str | None,
        _option(help="A running cluster, from one of its nodes: its GCS address HOST:PORT "
                "(port 6379 by default) or auto; not ray:// (default: start a local Ray).",
                panel=RAY),
    ] = None,
    workers: Annotated[int, _option(help="Model actors.", panel=RAY)] = 1,
    gpus_per_worker: Annotated[
        float, _option(help="GPUs per actor (0.5 puts two on a GPU).", panel=RAY)
    ] = 0.0,
    cpus_per_worker: Annotated[
        float, _option(help="CPUs Ray reserves per actor; its ONNX Runtime or torch threads "
                       "(rounded up).", panel=RAY)
    ] = 1.0,
    output_format: Annotated[
        Literal["jsonl", "parquet"], _option("--format", help="Shard format.", panel=RAY)
    ] = "jsonl",
    report: Annotated[
        Path | None,
        typer.Option(help="Also write the review page of the label issues here (HTML)."),
    ] = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Refine a corpus's labels with a trained bundle, streaming it in chunks.

    Exit codes: 0 done, 1 Triton unusable (resumable), 2 bad input or bundle, 3 the output was
    written but most rows were rejected (--max-reject-fraction) or no label of the corpus is in
    the bundle's label set. For the corpus the bundle was trained on, use `train --refined-out`.
    """
    from sidyp_prod import api
    from sidyp_prod.backends.triton_backend import TritonError
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError
    from sidyp_prod.stream import ResumeError, journal_path

    if model is not None:
        _refuse_unused(ctx, TRAINING_ONLY, "when refine trains a bundle (without --model)",
                       "train with `sidyp-prod train`")
    if engine == "local":
        _refuse_unused(ctx, RAY_ONLY, "with --engine ray")
    if triton_url is None:
        _refuse_unused(ctx, ("triton_retry_seconds",), "with --triton-url")
    if "-" in map(str, corpus) and out is None and engine == "local":
        _fail("the corpus is read from stdin ('-'): give --out (a file, or '-' for stdout)")
    if engine == "ray":
        from sidyp_prod.backends import backend_choice
        from sidyp_prod.readers import detect_format

        if input_format not in (None, "jsonl") or any(
                p.is_file() and detect_format(p) != "jsonl" for p in corpus):
            _fail("--engine ray reads JSONL (.jsonl, .jsonl.gz); refine other formats with "
                  "--engine local")

        if report is not None:
            _fail("--report applies to --engine local; for a ray output directory run "
                  "`sidyp-prod report OUT_DIR --model MODEL`")

        ray_backend, options = backend_choice(backend, triton_url, triton_retry_seconds)
        _refine_ray(corpus, model, out, backend=ray_backend, precision=precision,
                    backend_options=options,
                    fields=_fields(text_field, label_field, id_field), strict=strict,
                    workers=workers, gpus_per_worker=gpus_per_worker,
                    cpus_per_worker=cpus_per_worker, address=address,
                    batch_size=chunk_size, output_format=output_format,
                    progress=not quiet, as_json=as_json, resume=resume, rejects=rejects,
                    max_reject_fraction=max_reject_fraction)
        return
    if len(corpus) != 1:
        _fail("--engine local refines one corpus; give one file (or use --engine ray)")
    if model is None:
        _refine_untrained(corpus[0], out, save_model=save_model, max_train_rows=max_train_rows,
                          preset=preset, encoder=encoder, embedding_model=embedding_model,
                          device=device, seed=seed, overwrite=overwrite,
                          trusted_field=trusted_field,
                          fields=_fields(text_field, label_field, id_field), rejects=rejects,
                          strict=strict, resume=resume, chunk_size=chunk_size, quiet=quiet,
                          as_json=as_json, report=report,
                          max_reject_fraction=max_reject_fraction, input_format=input_format)
        return
    out = out or str(api.default_refined_path(corpus[0]))
    try:
        summary = api.refine(
            corpus[0],
            model,
            out,
            backend=backend,
            precision=precision,
            fields=_fields(text_field, label_field, id_field),
            rejects=rejects,
            strict=strict,
            chunk_size=chunk_size,
            resume=resume,
            progress=not quiet and out != "-",
            triton_url=triton_url,
            triton_retry_seconds=triton_retry_seconds,
            report=report,
            max_reject_fraction=max_reject_fraction,
            log=_log,
            input_format=input_format,
        )
    except (InputError, BundleError, ResumeError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except TritonError as exc:
        if out != "-" and journal_path(out).is_file():
            _fail(f"{exc}\nwhat was written is kept: re-run with --resume to continue", code=1)
        _fail(f"{exc}\nnothing was written: re-run when the server is up", code=1)
    except RuntimeError as exc:  # an optional reader missing (pyarrow, zstandard)
        _fail(str(exc))
    if out != "-":
        _report(summary, as_json)
    else:
        if as_json:
            typer.echo(json.dumps(summary.to_dict()), err=True)
        for note in summary.notes:
            typer.echo(f"note: {note}", err=True)
        for problem in summary.problems:
            typer.echo(f"error: {problem}", err=True)
    if summary.problems:
        raise typer.Exit(3)


def _refine_untrained(corpus: Path, out: str | None, *, max_train_rows: int | None, seed: int,
                      preset: str, quiet: bool, as_json: bool, **options) -> None:
    """``refine CORPUS`` without --model: train on it, then refine every row."""
    from sidyp_prod import api
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError
    from sidyp_prod.stream import ResumeError

    if out == "-":
        _fail("refine without --model writes a file: give --out PATH (or omit it)")
    try:
        preset, config = api.training_config(preset, options["device"],
                                             max_train_rows=max_train_rows, seed=seed)
        config.validate()
        if not quiet:
            _log(f"preset {preset}")
        summary = api.refine_corpus(
            corpus, out, config, progress=not quiet, log=None if quiet else _log, **options,
        )
    except (InputError, BundleError, ResumeError, ValueError, FileNotFoundError,
            FileExistsError, RuntimeError) as exc:
        _fail(str(exc))
    _report(summary, as_json)
    if summary.refined.problems:
        raise typer.Exit(3)


def _refine_ray(corpus: list[Path], model: Path | None, out: str | None, *, as_json: bool,
                resume: bool, rejects: Path | None, max_reject_fraction: float,
                **options) -> None:
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError

    if model is None or out is None:
        _fail("--engine ray applies a trained bundle: give --model and --out "
              "(train one with `sidyp-prod train`, or run refine without --engine ray)")
    if resume or rejects or out == "-":
        _fail("--engine ray writes a new directory (rejects in their own shards): "
              "--resume, --rejects and '-' do not apply")
    try:
        from sidyp_prod.engines.ray_engine import AccountingError, refine_ray
    except ImportError as exc:
        _fail(f"--engine ray needs Ray Data: pip install 'sidyp-prod[ray]' ({exc})")
    try:
        summary = refine_ray(corpus, model, out, **options)
    except (InputError, BundleError, ValueError, FileNotFoundError, FileExistsError) as exc:
        _fail(str(exc))
    except AccountingError as exc:
        _fail(str(exc), code=1)
    from sidyp_prod.checks import reject_fraction_problems

    summary.problems = reject_fraction_problems(summary.read, summary.rejected,
                                                max_reject_fraction)
    _report(summary, as_json)
    for problem in summary.problems:
        typer.echo(f"error: {problem}", err=True)
    if summary.problems:
        raise typer.Exit(3)


@app.command(cls=Command)
def export(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Write the graphs here (with onnx.json) instead of into the bundle."),
    ] = None,
    int8: Annotated[bool, _flag("--int8/--no-int8",
                                help="Also write the int8-quantized encoder.")] = True,
    fp16: Annotated[bool, _flag("--fp16/--no-fp16",
                                help="Also write a float16 encoder for GPUs "
                                "(refine --precision fp16).")] = False,
    atol: Annotated[float, typer.Option(help="Largest accepted |onnx - torch| difference.")] = 1e-4,
    validate: Annotated[bool, _flag("--validate/--no-validate",
                                    help="Compare against PyTorch after export.")] = True,
    triton_repo: Annotated[
        Path | None,
        typer.Option(help="Also write a Triton model repository here (e.g. triton_models)."),
    ] = None,
    onnx: Annotated[bool, _flag(
        "--onnx/--no-onnx", help="Export the graphs from PyTorch (needs sidyp-prod\\[train]); "
        "--no-onnx writes the --triton-repo from the graphs the bundle (or --out) already "
        "holds, without torch.")] = True,
    cpu_instances: Annotated[int | None, typer.Option(
        min=1, help="Instances of each ONNX model in the repository's CPU configurations "
        "(python, cpu), one thread each (default: this machine's cores).")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="Corpus whose texts calibrate the int8 encoder (its fp32 channels and GPTQ "
        "rounding), e.g. the training corpus (default: keep the bundle's int8 graph if its "
        "fp32 graph is unchanged, else round the weights to the nearest step).")] = None,
    text_field: TextField = "text",
    input_format: InputFormat = None,
) -> None:
    """Export the encoder and denoiser to ONNX, validate them against PyTorch, and optionally
    write a Triton model repository."""
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.checks import MissingExtraError, require_train_extra
    from sidyp_prod.corpus import InputError

    if not onnx:
        if triton_repo is None:
            _fail("--no-onnx exports nothing by itself: give --triton-repo DIR")
        _refuse_unused(ctx, ONNX_EXPORT_ONLY, "when export writes the ONNX graphs (without "
                       "--no-onnx)")
        _write_triton_repo(bundle, triton_repo, out, cpu_instances)
        return
    try:
        require_train_extra("ONNX export")
        from sidyp_prod.export.onnx import export_onnx, validate_onnx

        texts = (None if calibration is None
                 else _calibration_texts(calibration, text_field, input_format))
        graphs = export_onnx(bundle, out, int8=int8, fp16=fp16, calibration_texts=texts)
    except (BundleError, FileNotFoundError, MissingExtraError, InputError) as exc:
        _fail(str(exc))
    except (ValueError, RuntimeError) as exc:  # the calibration corpus' format or its reader
        if calibration is None:
            raise
        _fail(f"--calibration {calibration}: {exc}")
    files = [graphs[part]["file"] for part in ("encoder", "denoiser", "embedder")
             if part in graphs]
    files += [graphs["encoder"][key] for key in ("int8_file", "fp16_file")
              if graphs["encoder"].get(key)]
    typer.echo(f"wrote {', '.join(files)} (opset {graphs['opset']}) into {out or bundle}")
    if validate:
        report = validate_onnx(bundle, atol=atol, onnx_dir=out)
        typer.echo(report.to_text())
        if not report.ok:
            _fail(f"the ONNX graphs failed validation against PyTorch (atol {atol:g}): see above",
                  code=1)
    if triton_repo is not None:
        _write_triton_repo(bundle, triton_repo, out, cpu_instances)


def _calibration_texts(corpus: Path, text_field: str, input_format: str | None) -> list[str]:
    """The int8 calibration sample of ``corpus``'s texts (rows without a text are skipped)."""
    from sidyp_prod.corpus import FieldNames, Row, iter_corpus
    from sidyp_prod.export.quantize import calibration_sample

    texts = [row.text for row in iter_corpus(corpus, FieldNames(text=text_field),
                                             input_format=input_format)
             if isinstance(row, Row)]
    if not texts:
        _fail(f"{corpus}: no row has a usable {text_field!r} field to calibrate the int8 "
              "encoder on")
    return calibration_sample(texts)


def _write_triton_repo(bundle: Path, repository: Path, onnx_dir: Path | None,
                       cpu_instances: int | None) -> None:
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.export.triton import write_triton_repository

    try:
        write_triton_repository(bundle, repository, onnx_dir=onnx_dir,
                                cpu_instances=cpu_instances)
    except (BundleError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote the Triton model repository {repository} (see docs/triton.md)")


@app.command(cls=Command)
def serve(
    repository: Annotated[
        Path, typer.Argument(help="Model repository from `export --triton-repo`.")
    ] = Path("triton_models"),
    host: Annotated[
        str, typer.Option(help="Interface every endpoint binds to: 127.0.0.1 serves this "
                          "machine only; 0.0.0.0 every network it is on.")
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    config_name: Annotated[
        str, typer.Option(help="Model configuration (configs/NAME.pbtxt) the server loads.")
    ] = "python",
    startup_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for every model to load.")
    ] = 180.0,
) -> None:
    """Serve a model repository with the local tritonserver of the nvidia-pytriton wheel until
    Ctrl-C or SIGTERM."""
    import signal

    from sidyp_prod.backends.onnx_backend import available_cores
    from sidyp_prod.triton_server import Ports, ServerError, TritonServer, instances_note

    server = TritonServer(repository, Ports(http_port, grpc_port, metrics_port), config_name,
                          startup_timeout, host=host)
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM takes the same way out as Ctrl-C, so the server and its shared memory go too.
    signal.signal(signal.SIGTERM, interrupt)
    typer.echo(f"starting tritonserver on {repository} ({host}); not ready yet, loading the "
               f"models (up to {startup_timeout:g} s)", err=True)
    if repository.is_dir() and (note := instances_note(repository, config_name,
                                                       available_cores())):
        typer.echo(note, err=True)
    try:
        server.start()
    except ServerError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        server.stop()
        raise typer.Exit(130) from None
    try:
        # Inside the try: a SIGTERM right after this line must still stop the server.
        typer.echo(f"ready: serving {repository} on {host}\n  HTTP    {server.http_url}\n"
                   f"  gRPC    {server.grpc_url}\n  metrics {server.metrics_url}\n"
                   "Ctrl-C stops it.")
        code = server.process.wait() if server.process else 1
        typer.echo(f"error: tritonserver exited with code {code}: {server.log_cause()}\n"
                   f"--- the server's log, last lines ---\n{server.log_tail()}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
    finally:
        server.stop()


@app.command(cls=Command)
def report(
    refined: Annotated[
        Path, typer.Argument(help="Refined JSONL, CSV, TSV (also .gz or .zst) or Parquet, or a "
                             "--engine ray output directory.")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The HTML page (default: REFINED.report.html)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="The bundle that refined it: its id and settings, "
                     "and each issue's nearest training rows."),
    ] = None,
    train_corpus: Annotated[
        Path | None,
        typer.Option(help="The corpus the bundle was trained on, for the neighbours' texts "
                     "(not needed when REFINED is the bundle's own --refined-out)."),
    ] = None,
    gold_field: Annotated[
        str | None,
        typer.Option(help="Field with human labels: adds the accuracy and calibration views."),
    ] = None,
    max_rows: Annotated[
        int, typer.Option(help="Label issues embedded in the page (most likely wrong first).")
    ] = 1000,
    neighbours: Annotated[int, typer.Option(help="Nearest training rows per issue.")] = 5,
    label_studio: Annotated[
        Path | None, typer.Option(help="Also write the flagged rows as Label Studio tasks.")
    ] = None,
    argilla: Annotated[
        Path | None, typer.Option(help="Also write the flagged rows as Argilla records (JSONL).")
    ] = None,
    text_field: TextField = "text",
    label_field: Annotated[
        str, typer.Option(help="JSON field of --train-corpus holding the LLM label.")
    ] = "label",
    id_field: IdField = "id",
    as_json: JsonOut = False,
) -> None:
    """Write one self-contained HTML page of the label issues of a refined corpus (no gold
    labels needed; opens offline in any browser)."""
    from sidyp_prod import api
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError
    from sidyp_prod.report import default_report_path

    try:
        summary = api.report(
            refined, out or default_report_path(refined), model=model,
            train_corpus=train_corpus, fields=_fields(text_field, label_field, id_field),
            gold_field=gold_field, max_rows=max_rows, neighbours=neighbours,
            label_studio=label_studio, argilla=argilla,
        )
    except (InputError, BundleError, ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    _report(summary, as_json)


@app.command(cls=Command)
def evaluate(
    refined: Annotated[
        Path, typer.Argument(help="Refined JSONL, CSV, TSV (also .gz or .zst) or Parquet, or a "
                             "--engine ray output directory.")
    ],
    gold_field: Annotated[
        str, typer.Option(help="JSON field with the human label.")
    ] = "gold_label",
    plot: Annotated[
        Path | None,
        typer.Option(help="Write accuracy.png and reliability.png into this directory."),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Score refined labels against gold: accuracy, per-class report, confusion, calibration."""
    from sidyp_prod import api

    try:
        report = api.evaluate(refined, gold_field=gold_field, plot_dir=plot)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    _report(report, as_json)


if __name__ == "__main__":
    app()
