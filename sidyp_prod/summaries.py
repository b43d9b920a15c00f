"""What ``train``, ``refine`` and ``refine CORPUS`` report: the summaries the CLI prints
(``to_text``) and writes as JSON (``to_dict``)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .decision import rule_name
from .noise import noise_ratio_at_clip as at_clip_bound
from .refinement import BatchRefinement, kind_counts

if TYPE_CHECKING:
    from .training_pipeline import TrainedModel


@dataclass
class TrainSummary:
    bundle: str
    rows: int
    rejected: int
    unlabeled: int
    classes: int
    noise_ratio: float
    noise_ratio_estimated: bool
    prior_kinds: dict[str, int]
    labels_changed: int
    best_diffusion_epoch: int
    temperature: float
    class_noise_ratios: list[float] = field(default_factory=list)  # rho per given class
    # The rho the calibration fitted to (decision.calibration_targets); None: noise_ratio.
    calibration_noise_ratio: float | None = None
    # 90% interval of the noise ratio (noise.noise_ratio_interval); None when it was given.
    noise_ratio_interval: tuple[float, float] | None = None
    label_bias: list[float] = field(default_factory=list)  # per-class calibration
    label_shares: list[float] | None = None  # the given labels' class shares, when divided by
    seconds: dict[str, float] = field(default_factory=dict)
    refined_out: str | None = None
    rejects: str | None = None
    refined_as_new: int = 0  # --refined-out rows past the training sample, refined as new rows
    corpus: dict[str, Any] = field(default_factory=dict)  # the trained corpus's file identity
    # The training rows' refined fields by input line (not printed): refine_corpus reuses them.
    predictions: dict[int, dict] = field(default_factory=dict, repr=False, compare=False)
    reject_reasons: list[str] = field(default_factory=list)  # the first few
    noise_ratio_at_clip: bool = False  # the estimate hit a bound of noise.NOISE_RATIO_CLIP
    # Classes with fewer LLM labels than min_class_rows: kept, never a change target.
    small_classes: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # train --trusted-field: the change rules tried on the trusted rows and the one kept
    # (trusted.TrustedCheck.to_dict); None without trusted labels.
    trusted_check: dict[str, Any] | None = None
    # Every distribution for every trained row, for benchmarks and callers that want more than
    # the refined labels; not part of the printed or JSON summary.
    refinement: BatchRefinement | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_training(cls, trained: TrainedModel, **files: Any) -> TrainSummary:
        """The training's own numbers (estimates, calibration, timings); ``files``: the rest
        (bundle, rows, rejects, ...), which the caller knows."""
        result, fit = trained.result, trained.fit
        calibration = fit.calibration
        estimated = result.noise_ratio_estimated
        return cls(
            noise_ratio=result.noise_ratio,
            noise_ratio_estimated=estimated,
            noise_ratio_at_clip=estimated and at_clip_bound(result.noise_ratio),
            prior_kinds=kind_counts(result.prior_kind),
            labels_changed=sum(p["is_label_issue"] for p in fit.predictions),
            best_diffusion_epoch=result.best_diffusion_epoch,
            temperature=calibration.temperature,
            class_noise_ratios=[round(float(r), 6) for r in fit.class_noise_ratios],
            calibration_noise_ratio=fit.calibration_noise_ratio,
            noise_ratio_interval=(None if fit.noise_ratio_interval is None else
                                  tuple(round(x, 4) for x in fit.noise_ratio_interval)),
            label_bias=[float(b) for b in calibration.label_bias]
            if calibration.label_bias is not None else [],
            label_shares=[float(x) for x in calibration.label_shares]
            if calibration.label_shares is not None else None,
            seconds={k: round(v, 2) for k, v in result.timings.items()},
            trusted_check=None if fit.trusted is None else fit.trusted.to_dict(),
            refinement=fit.refinement,
            **files,
        )

    def to_dict(self) -> dict[str, Any]:
        hidden = ("refinement", "predictions")
        return {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__
                if k not in hidden}

    def bundle_record(self) -> dict[str, Any]:
        """The manifest's training record: the summary without the calibration, which is the
        bundle's own record (calibration.json)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("label_bias", "label_shares")}

    def to_text(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.prior_kinds.items())
        how = "estimated" if self.noise_ratio_estimated else "given"
        if self.noise_ratio_at_clip:
            how += (", at a bound of its clip (0.05, 0.9): not a measurement; small classes "
                    "or too few rows, --noise-ratio sets it")
        lines = [
            f"bundle            {self.bundle}",
            f"rows              {self.rows} trained, {self.rejected} rejected, "
            f"{self.unlabeled} without an LLM label",
            f"classes           {self.classes}",
            f"noise ratio       {self.noise_ratio:.3f} ({how})"
            + (f", calibrated to {self.calibration_noise_ratio:.3f}"
               if self.calibration_noise_ratio not in (None, self.noise_ratio) else "")
            + (f" (90% interval {self.noise_ratio_interval[0]:.3f} to "
               f"{self.noise_ratio_interval[1]:.3f})" if self.noise_ratio_interval else ""),
            f"prior candidates  {kinds}",
            f"labels changed    {self.labels_changed}",
            *self._trusted_lines(),
            "seconds           " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ]
        if self.refined_out:
            lines.append(f"refined labels    {self.refined_out}"
                         + (f" ({self.rows} trained on, {self.refined_as_new} refined as new)"
                            if self.refined_as_new else ""))
        if self.rejected:
            lines.append(f"rejects           {self.rejects}")
            lines += [f"                  {reason}" for reason in self.reject_reasons]
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def _trusted_lines(self) -> list[str]:
        check = self.trusted_check
        if check is None:
            return []
        lo, hi = check["noise_ratio_interval"]
        lines = [f"trusted labels    {check['rows']} rows; LLM label wrong on "
                 f"{check['noise_ratio']:.3f} of them (90% interval {lo:.3f} to {hi:.3f})"
                 + ("; the calibration fits it (the estimate's interval misses it)"
                    if check.get("calibrated_to_trusted") else "")]
        lines += [f"                  {rule_name(t['rule'], t['odds'])}: {t['changed']} changed, "
                  f"{t['fixed']} fixed, "
                  f"{t['broken']} broken" for t in check["tried"] if t["rule"] != "keep"]
        chosen = check["chosen"]
        lines.append("                  kept: " + (
            "keep every LLM label (no rule fixed clearly more than it broke)"
            if chosen["rule"] == "keep" else rule_name(chosen["rule"], chosen["odds"])))
        for name in ("confidence", "label_score"):
            scaling = check.get(f"{name}_scaling")
            lines.append(f"                  {name}: " + (
                "as refined (no rescaling fits the trusted labels significantly better)"
                if scaling is None
                else f"rescaled to the trusted labels (Platt slope {scaling[0]:.3f}, "
                     f"intercept {scaling[1]:.3f})"))
        return lines


@dataclass
class RefineSummary:
    output: str
    read: int
    refined: int
    rejected: int
    changed: int  # rows with an LLM label whose refined label differs (is_label_issue)
    rows_per_second: float
    rejects: str | None = None
    report: str | None = None  # the review page (refine --report)
    filled: int = 0  # rows without an LLM label, which got one
    reject_reasons: list[str] = field(default_factory=list)  # the first few
    notes: list[str] = field(default_factory=list)  # what the user should know, not a failure
    # Why the run failed although every row was written (exit code 3 in the CLI).
    problems: list[str] = field(default_factory=list)
    precision: str = ""  # the encoder graph that ran: fp32, int8 or fp16

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        text = (
            f"read {self.read} rows: {self.refined} refined, {self.rejected} rejected, "
            f"{self.changed} labels changed (LLM label replaced), {self.filled} unlabeled rows "
            f"given a label ({self.rows_per_second:.1f} rows/s, {self.precision or 'fp32'} "
            f"encoder{', close calls in fp32' if self.precision == 'int8' else ''}) "
            f"-> {self.output}"
        )
        if self.rejected:
            text += f"; rejects in {self.rejects}"
            text += "".join(f"\n  {reason}" for reason in self.reject_reasons)
        text += "".join(f"\nnote: {note}" for note in self.notes)
        text += "".join(f"\nerror: {problem}" for problem in self.problems)
        if self.report:
            text += f"\nreview the label issues: {self.report}"
        return text


@dataclass
class CorpusSummary:
    """``refine CORPUS`` without a bundle: what training did and what refining did."""

    model: str
    trained: TrainSummary | None  # None: a finished training was reused (--resume)
    refined: RefineSummary

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reused_model": self.trained is None,
                "train": self.trained.to_dict() if self.trained else None,
                "refine": self.refined.to_dict()}

    def to_text(self) -> str:
        r = self.refined
        trained = self.trained.rows if self.trained else None
        lines = [self.trained.to_text() if self.trained else
                 f"model             {self.model} (reused: its training had finished)"]
        lines.append(r.to_text())
        if trained is not None and r.refined > trained:
            lines.append(f"rows              {trained} trained on, {r.refined - trained} refined "
                         "as new rows")
        lines.append(f"model kept in     {self.model} (refine new rows: sidyp-prod refine NEW "
                     f"--model {self.model})")
        return "\n".join(lines)
