"""``sidyp-prod``: a thin Typer layer over :mod:`sidyp_prod.api`. Commands parse and hand over."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from sidyp_prod.config import SiDyPConfig

# Nothing is ever fetched from a model hub; set before transformers/tokenizers are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="sidyp-prod",
    help="Clean LLM-generated labels with SiDyP.",
    no_args_is_help=True,
    add_completion=False,
)

# Importing the config is cheap (no torch); the CLI defaults are the library's defaults.
D = SiDyPConfig()


TextField = Annotated[str, typer.Option(help="Field (column) holding the text.")]
LabelField = Annotated[
    str, typer.Option(help="Field (column) holding the LLM label (null or empty = refused).")
]
IdField = Annotated[
    str, typer.Option(help="Field (column) holding the row id (row number if absent).")
]
InputFormat = Annotated[
    str | None,
    typer.Option(help="Corpus format: jsonl, csv, tsv, parquet or datasets (a save_to_disk "
                 "directory); default: from the name (.jsonl[.gz|.zst], .csv, .tsv, .parquet, "
                 "a directory)."),
]
Rejects = Annotated[
    Path | None,
    typer.Option(help="Where rejected rows go (default: next to the output)."),
]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first bad row (exit code 2).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _fields(text_field: str, label_field: str, id_field: str):
    from sidyp_prod.corpus import FieldNames

    return FieldNames(text=text_field, label=label_field, id=id_field)


def _report(summary, as_json: bool) -> None:
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.to_text())


@app.command()
def train(
    corpus: Annotated[
        Path, typer.Argument(help="Corpus with text and LLM labels: JSONL, CSV, TSV, Parquet or "
                             "a datasets directory.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the model bundle.")],
    refined_out: Annotated[
        Path | None,
        typer.Option(help="Also write the corpus's own refined labels here (.jsonl, .csv, .tsv "
                     "or .parquet)."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Label set: comma list or a file (one per line), else from the data."),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(help="Local BERT directory (default: the bundled all-MiniLM-L6-v2)."),
    ] = None,
    text_field: TextField = "text",
    label_field: LabelField = "label",
    id_field: IdField = "id",
    input_format: InputFormat = None,
    rejects: Rejects = None,
    strict: Strict = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    export: Annotated[
        bool, typer.Option(help="Also export the ONNX graphs into the bundle.")
    ] = True,
    branches: Annotated[int, typer.Option(help="Classifier branches M.")] = D.branches,
    classifier_epochs: Annotated[int, typer.Option(help="Stage I epochs.")] = D.classifier_epochs,
    snapshots: Annotated[
        int, typer.Option(help="Recorded training-dynamics snapshots.")
    ] = D.snapshots,
    trainable_layers: Annotated[
        int, typer.Option(help="Top encoder layers each branch tunes.")
    ] = D.trainable_layers,
    max_length: Annotated[
        int, typer.Option(help="Token limit; longer texts are truncated.")
    ] = D.max_length,
    classifier_batch_size: Annotated[int, typer.Option()] = D.classifier_batch_size,
    classifier_lr: Annotated[float, typer.Option()] = D.classifier_lr,
    head_lr: Annotated[float, typer.Option()] = D.head_lr,
    coreg_alpha: Annotated[
        float, typer.Option(help="Stage I co-regularisation weight.")
    ] = D.coreg_alpha,
    noise_ratio: Annotated[
        float | None,
        typer.Option(help="Noise fraction rho (default: estimated from the data)."),
    ] = None,
    knn_k: Annotated[int, typer.Option(help="Neighbours K of the prior.")] = D.knn_k,
    tau_certain: Annotated[float, typer.Option()] = D.tau_certain,
    tau_dominant: Annotated[float, typer.Option()] = D.tau_dominant,
    diffusion_epochs: Annotated[int, typer.Option()] = D.diffusion_epochs,
    diffusion_lr: Annotated[float, typer.Option()] = D.diffusion_lr,
    diffusion_batch_size: Annotated[int, typer.Option()] = D.diffusion_batch_size,
    diffusion_steps: Annotated[int, typer.Option(help="T_train.")] = D.diffusion_steps,
    inference_steps: Annotated[int, typer.Option(help="T_infer.")] = D.inference_steps,
    timestep_mapping: Annotated[
        str, typer.Option(help="'spaced' or 'authors'.")
    ] = D.timestep_mapping,
    denoiser_width: Annotated[int, typer.Option()] = D.denoiser_width,
    refine_samples: Annotated[
        int, typer.Option(help="n_s reverse processes per update.")
    ] = D.refine_samples,
    coreg_lambda: Annotated[
        float, typer.Option(help="Stage II co-regularisation weight.")
    ] = D.coreg_lambda,
    simplex_scale: Annotated[float, typer.Option(help="S.")] = D.simplex_scale,
    label_source: Annotated[
        str, typer.Option(help="predicted_label from 'product', 'marginal', 'given', "
                                "'candidates' or 'classifier'.")
    ] = D.label_source,
    change_rule: Annotated[
        str,
        typer.Option(help="'odds': keep the LLM label unless another class is --change-odds "
                     "times as probable; 'argmax': always the most probable class."),
    ] = D.change_rule,
    change_odds: Annotated[
        float, typer.Option(help="Labels a change must be expected to fix per label it breaks.")
    ] = D.change_odds,
    class_calibration: Annotated[
        bool, typer.Option(help="Per-class label_score calibration from the noise marking.")
    ] = D.class_calibration,
    label_share_correction: Annotated[
        bool, typer.Option(help="Divide the distribution by the LLM labels' class shares before "
                           "calibrating (the experts' learned prior is the LLM's habit).")
    ] = D.label_share_correction,
    held_out_folds: Annotated[
        int, typer.Option(help="Folds of classifiers that never saw a training row's label: the "
                          "product's third expert for --refined-out (0: off).")
    ] = D.held_out_folds,
    dynamic_prior: Annotated[
        bool, typer.Option(help="Refine the Stage II targets from the denoiser (the paper; off: "
                           "the static kNN weights, measured better).")
    ] = D.dynamic_prior,
    classifier_dropout: Annotated[float, typer.Option()] = D.classifier_dropout,
    warmup_fraction: Annotated[float, typer.Option(help="Stage I lr warm-up.")] = D.warmup_fraction,
    coreg_warmup_fraction: Annotated[
        float, typer.Option(help="Stage I epochs without co-regularisation.")
    ] = D.coreg_warmup_fraction,
    grad_clip: Annotated[float, typer.Option()] = D.grad_clip,
    diffusion_warmup_fraction: Annotated[
        float, typer.Option(help="Stage II epochs on certain rows only.")
    ] = D.diffusion_warmup_fraction,
    ema_decay: Annotated[float, typer.Option()] = D.ema_decay,
    use_ema: Annotated[bool, typer.Option(help="Keep the EMA denoiser weights.")] = D.use_ema,
    holdout_fraction: Annotated[
        float, typer.Option(help="Rows held out to pick the diffusion epoch.")
    ] = D.holdout_fraction,
    encode_batch_size: Annotated[int, typer.Option()] = D.encode_batch_size,
    seed: Annotated[int, typer.Option()] = D.seed,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Train SiDyP on a corpus and write a model bundle."""
    from sidyp_prod import api
    from sidyp_prod.corpus import InputError, parse_label_set

    params = {k: v for k, v in locals().items() if k in SiDyPConfig.__dataclass_fields__}
    try:
        config = SiDyPConfig.from_dict(params)
        config.validate()
        summary = api.train(
            corpus,
            out,
            config,
            fields=_fields(text_field, label_field, id_field),
            labels=parse_label_set(labels),
            encoder=encoder,
            rejects=rejects,
            strict=strict,
            refined_out=refined_out,
            overwrite=overwrite,
            progress=not quiet,
            log=None if quiet else lambda m: typer.echo(m, err=True),
            input_format=input_format,
        )
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    _report(summary, as_json)


@app.command()
def refine(
    corpus: Annotated[
        list[Path],
        typer.Argument(help="Corpus to refine: JSONL ('.jsonl.gz', '.jsonl.zst' too), CSV, TSV, "
                       "Parquet or a datasets directory; with --engine ray, any number of "
                       "JSONL files, globs and directories."),
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.")],
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Output: .jsonl, .csv, .tsv, .parquet, or '-' for "
                     "stdout; with --engine ray, a new directory of shards and a manifest."),
    ],
    backend: Annotated[
        str, typer.Option(help="Runtime: 'onnx' (ONNX Runtime) or 'torch'.")
    ] = "onnx",
    triton_url: Annotated[
        str | None,
        typer.Option(help="Run the models on this Triton server: grpc://HOST:8001 or "
                     "http://HOST:8000 (repository from `export --triton-repo`)."),
    ] = None,
    triton_retry_seconds: Annotated[
        float, typer.Option(help="How long to retry an unreachable Triton server.")
    ] = 120.0,
    precision: Annotated[
        str, typer.Option(help="ONNX encoder: 'fp32', or 'int8' (CPU, faster, ~97% same labels).")
    ] = "fp32",
    text_field: TextField = "text",
    label_field: LabelField = "label",
    id_field: IdField = "id",
    input_format: InputFormat = None,
    rejects: Rejects = None,
    strict: Strict = False,
    chunk_size: Annotated[int, typer.Option(help="Rows per streamed chunk.")] = 1024,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run.")] = False,
    engine: Annotated[
        str, typer.Option(help="'local' (this process) or 'ray' (Ray Data, local or a cluster).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--engine ray: a running cluster, ray://HOST:PORT (default: start a "
                     "local Ray)."),
    ] = None,
    workers: Annotated[int, typer.Option(help="--engine ray: model actors.")] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option(help="--engine ray: GPUs per actor (0.5 puts two on a GPU).")
    ] = 0.0,
    cpus_per_worker: Annotated[
        float, typer.Option(help="--engine ray: CPUs Ray reserves per actor; its ONNX Runtime "
                            "or torch threads (rounded up).")
    ] = 1.0,
    output_format: Annotated[
        str, typer.Option("--format", help="--engine ray: shard format, 'jsonl' or 'parquet'.")
    ] = "jsonl",
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Refine a corpus's labels with a trained bundle, streaming it in chunks."""
    from sidyp_prod import api
    from sidyp_prod.backends.triton_backend import TritonError
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError
    from sidyp_prod.stream import ResumeError

    if engine == "ray":
        from sidyp_prod.backends import backend_choice
        from sidyp_prod.readers import detect_format

        if input_format not in (None, "jsonl") or any(
                p.is_file() and detect_format(p) != "jsonl" for p in corpus):
            _fail("--engine ray reads JSONL (.jsonl, .jsonl.gz); refine other formats with "
                  "--engine local")

        backend, options = backend_choice(backend, triton_url, triton_retry_seconds)
        _refine_ray(corpus, model, out, backend=backend, precision=precision,
                    backend_options=options,
                    fields=_fields(text_field, label_field, id_field), strict=strict,
                    workers=workers, gpus_per_worker=gpus_per_worker,
                    cpus_per_worker=cpus_per_worker, address=address,
                    batch_size=chunk_size, output_format=output_format,
                    progress=not quiet, as_json=as_json, resume=resume, rejects=rejects)
        return
    if engine != "local":
        _fail(f"unknown engine {engine!r}; choose 'local' or 'ray'")
    if len(corpus) != 1:
        _fail("--engine local refines one corpus; give one file (or use --engine ray)")
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
            input_format=input_format,
        )
    except (InputError, BundleError, ResumeError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except TritonError as exc:
        _fail(f"{exc}\nwhat was written is kept: re-run with --resume to continue", code=1)
    except RuntimeError as exc:  # an optional reader missing (pyarrow, zstandard)
        _fail(str(exc))
    if out != "-":
        _report(summary, as_json)
    elif as_json:
        typer.echo(json.dumps(summary.to_dict()), err=True)


def _refine_ray(corpus: list[Path], model: Path, out: str, *, as_json: bool, resume: bool,
                rejects: Path | None, **options) -> None:
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError

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
    _report(summary, as_json)


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Write the graphs here (with onnx.json) instead of into the bundle."),
    ] = None,
    int8: Annotated[bool, typer.Option(help="Also write the int8-quantized encoder.")] = True,
    atol: Annotated[float, typer.Option(help="Largest accepted |onnx - torch| difference.")] = 1e-4,
    validate: Annotated[bool, typer.Option(help="Compare against PyTorch after export.")] = True,
    triton_repo: Annotated[
        Path | None,
        typer.Option(help="Also write a Triton model repository here (e.g. triton_models)."),
    ] = None,
) -> None:
    """Export the encoder and denoiser to ONNX, validate them against PyTorch, and optionally
    write a Triton model repository."""
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.export.onnx import export_onnx, validate_onnx

    try:
        graphs = export_onnx(bundle, out, int8=int8)
    except (BundleError, FileNotFoundError) as exc:
        _fail(str(exc))
    files = [graphs["encoder"]["file"], graphs["denoiser"]["file"]]
    if graphs["encoder"].get("int8_file"):
        files.append(graphs["encoder"]["int8_file"])
    typer.echo(f"wrote {', '.join(files)} (opset {graphs['opset']}) into {out or bundle}")
    if validate:
        report = validate_onnx(bundle, atol=atol, onnx_dir=out)
        typer.echo(report.to_text())
        if not report.ok:
            _fail(f"the ONNX graphs failed validation against PyTorch (atol {atol:g}): see above",
                  code=1)
    if triton_repo is not None:
        from sidyp_prod.export.triton import write_triton_repository

        write_triton_repository(bundle, triton_repo, onnx_dir=out)
        typer.echo(f"wrote the Triton model repository {triton_repo} (see docs/triton.md)")


@app.command()
def serve(
    repository: Annotated[
        Path, typer.Argument(help="Model repository from `export --triton-repo`.")
    ] = Path("triton_models"),
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

    from sidyp_prod.triton_server import Ports, ServerError, TritonServer

    server = TritonServer(repository, Ports(http_port, grpc_port, metrics_port), config_name,
                          startup_timeout)
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM takes the same way out as Ctrl-C, so the server and its shared memory go too.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.start()
    except ServerError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        server.stop()
        raise typer.Exit(130) from None
    typer.echo(f"serving {repository}\n  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n"
               f"  metrics {server.metrics_url}\nCtrl-C stops it.")
    try:
        code = server.process.wait() if server.process else 1
        typer.echo(f"error: tritonserver exited with code {code}:\n{server.log_tail()}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
    finally:
        server.stop()


@app.command()
def evaluate(
    refined: Annotated[
        Path, typer.Argument(help="Refined JSONL, CSV, TSV or Parquet, or a --engine ray output "
                             "directory.")
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
