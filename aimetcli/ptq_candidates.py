"""What ptq tries: the range schemes, whether per-channel weights are a candidate, whether
equalization and AdaRound are stages (the rules ptq_flow.py follows; the CLI and api read them
too). All but equalization's are known before anything runs; equalization's reads the
granularity the flow chose."""

from __future__ import annotations

from aimetcli.kernels.quant import QuantScheme


def scheme_candidates(options) -> tuple:
    """The range schemes ``ptq --quant-scheme auto`` tries, as AIMET's AutoQuant does in its
    'QuantScheme Selection' (min-max and tf-enhanced; AIMET keeps min-max where the bitwidth is
    16 or more, where the grid is fine enough that clipping cannot pay)."""
    if options.param_bw >= 16 and options.act_bw >= 16:
        return (QuantScheme.MIN_MAX,)
    return (QuantScheme.MIN_MAX, QuantScheme.TF_ENHANCED)


def per_channel_candidate(options) -> str | None:
    """None when per-channel weights are a candidate of ptq's choice, else why not: the user chose
    (``--per-channel`` / ``--per-tensor``) or the config sets ``per_channel_quantization`` (the
    target's runtime decides it there). With the default config, per-channel is allowed."""
    if options.per_channel is not None:
        return f"--{'per-channel' if options.per_channel else 'per-tensor'} given"
    cfg = options.config
    if cfg.source != "default" and cfg.per_channel_set:  # the shipped default leaves it to ptq
        return f"the config sets per_channel_quantization {cfg.per_channel}"
    return None


ADAROUND_BELOW_BITS = 8


def adaround_by_default(options) -> bool:
    """AdaRound is a stage of ptq by default below 8-bit weights: at 8 bits rounding to nearest
    costs little (the sample models lose at most 0.2 points to it), and AdaRound's passes are
    the slowest stage (docs/design.md, "AdaRound")."""
    return options.param_bw < ADAROUND_BELOW_BITS


def why_no_adaround(options) -> str:
    """Why AdaRound is not a stage of this ptq (the row's and report.json's reason)."""
    if options.param_bw < ADAROUND_BELOW_BITS:
        return "--no-adaround given"
    return f"{options.param_bw}-bit weights (on by default below {ADAROUND_BELOW_BITS}; --adaround to try it)"


def why_not_equalized(options) -> str | None:
    """None when equalization is a stage of this ptq by default, else why not: with a scale per
    output channel (``options`` after the granularity choice, or the config's granularity) the
    channel imbalance that cross-layer scaling evens out costs the weights' grid nothing, and
    equalization was kept on none of the 16 corpus models where it found something to scale, and
    where it cleared the margin on a sample model, the deployed model ended within 0.4 dB and 3 of
    2,000 images of the model without it (docs/design.md, "Passes ptq no longer makes")."""
    per_channel = options.per_channel if options.per_channel is not None else options.config.per_channel
    if per_channel:
        return "per-channel weights (--equalize to try it)"
    return None
