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


TextField = Annotated[str, typer.Option(help="JSON field holding the text.")]
LabelField = Annotated[str, typer.Option(help="JSON field holding the LLM label (null = refused).")]
IdField = Annotated[
    str, typer.Option(help="JSON field holding the row id (line number if absent).")
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
    corpus: Annotated[Path, typer.Argument(help="JSONL corpus with text and LLM labels.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the model bundle.")],
    refined_out: Annotated[
        Path | None,
        typer.Option(help="Also write the corpus's own refined labels here (JSONL)."),
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
    dynamic_prior: Annotated[
        bool, typer.Option(help="Refine the kNN prior during Stage II (off: an ablation).")
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
        )
    except (InputError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _report(summary, as_json)


@app.command()
def refine(
    corpus: Annotated[Path, typer.Argument(help="JSONL corpus to refine ('.jsonl.gz' too).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output: .jsonl, .parquet, or '-' for stdout.")
    ],
    backend: Annotated[
        str, typer.Option(help="Runtime: 'onnx' (ONNX Runtime) or 'torch'.")
    ] = "onnx",
    precision: Annotated[
        str, typer.Option(help="ONNX encoder: 'fp32', or 'int8' (CPU, faster, ~97% same labels).")
    ] = "fp32",
    text_field: TextField = "text",
    label_field: LabelField = "label",
    id_field: IdField = "id",
    rejects: Rejects = None,
    strict: Strict = False,
    chunk_size: Annotated[int, typer.Option(help="Rows per streamed chunk.")] = 1024,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run.")] = False,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Refine a corpus's labels with a trained bundle, streaming it in chunks."""
    from sidyp_prod import api
    from sidyp_prod.bundle import BundleError
    from sidyp_prod.corpus import InputError
    from sidyp_prod.stream import ResumeError

    try:
        summary = api.refine(
            corpus,
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
        )
    except (InputError, BundleError, ResumeError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if out != "-":
        _report(summary, as_json)
    elif as_json:
        typer.echo(json.dumps(summary.to_dict()), err=True)


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
) -> None:
    """Export the encoder and denoiser to ONNX, then validate them against PyTorch."""
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
            _fail(f"ONNX outputs differ from PyTorch by more than {atol:g}", code=1)


@app.command()
def evaluate(
    refined: Annotated[Path, typer.Argument(help="Refined JSONL with gold labels.")],
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
