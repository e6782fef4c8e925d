"""AIMET-onnx's side of bench/peers_aimet.py: one job per process, run by /work/venv-aimet/bin/python.

This file imports aimet_onnx and torch, which only the AIMET venv has (bench/setup_aimet_peer.sh);
aimetcli never imports it. Usage:

    /work/venv-aimet/bin/python bench/aimet_driver.py JOB.json

JOB.json holds: ``task`` (quantsim | cle_quantsim | adaround | seqmse | analyze), ``model`` (an ONNX
path), ``fold`` (fold BN with fold_all_batch_norms_to_weight first), ``config`` (a quantsim config
JSON path), ``param_bw``, ``act_bw``, ``calib`` (.npz), ``num_samples``, ``batch_size``, ``eval``
(.npz), ``iterations`` (adaround), ``analyze_samples`` (analyze), ``out`` (a directory).

The job runs AIMET's public API as its documentation shows it: build QuantizationSimModel (min-max,
"tf"), optionally optimise the weights (apply_adaround / apply_seq_mse, which freeze the weight
encodings they chose), calibrate the rest with compute_encodings, and (analyze) call
analyze_per_layer_sensitivity with an eval_fn. ``work_done_at`` (time.time()) is taken when the
technique and calibration are done, before anything is scored, so the parent can time the whole
process up to that point (interpreter start and imports included), with the process's CPU time
(user + system) at that point, ``cpu_at_work_done``. Then the sim's logits on the
eval inputs are saved (out/logits.npy) for the parent to score exactly as it scores aimetcli's
models, the encodings are exported (out/aimet.encodings, 1.0.0), and a JSON summary is printed
on stdout as the last line.
"""

from __future__ import annotations

import json
import os
import sys
import time

T_START = time.time()

import numpy as np  # noqa: E402
import onnx  # noqa: E402


def batches(path: str, n: int, size: int, key: str = "input") -> list[dict[str, np.ndarray]]:
    x = np.load(path)[key][:n].astype(np.float32)
    return [{key: x[i:i + size]} for i in range(0, len(x), size)]


def sim_logits(session, x: np.ndarray, size: int = 250) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + size]})[0] for i in range(0, len(x), size)])


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def main(job_path: str) -> None:
    job = json.load(open(job_path))
    t_imported = time.time()
    import aimet_onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround, apply_seq_mse, analyze_per_layer_sensitivity
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
    from aimet_onnx.cross_layer_equalization import equalize_model

    stages: dict[str, float] = {"imports": time.time() - t_imported}
    qtypes = {4: aimet_onnx.int4, 8: aimet_onnx.int8, 16: aimet_onnx.int16}
    calib = batches(job["calib"], job["num_samples"], job["batch_size"])
    model = onnx.load(job["model"])
    task = job["task"]

    t = time.time()
    if task == "cle_quantsim":
        equalize_model(model)  # folds BN itself, then ReLU6 -> ReLU, cross-layer scaling, high-bias fold
        stages["fold_bn+cle"] = time.time() - t
    elif job.get("fold"):
        fold_all_batch_norms_to_weight(model)
        stages["fold_bn"] = time.time() - t

    t = time.time()
    sim = QuantizationSimModel(model, param_type=qtypes[job["param_bw"]], activation_type=qtypes[job["act_bw"]],
                               quant_scheme="min_max", config_file=job["config"])
    stages["sim"] = time.time() - t
    if task == "adaround":
        t = time.time()
        apply_adaround(sim, calib, num_iterations=job["iterations"])
        stages["apply_adaround"] = time.time() - t
    elif task == "seqmse":
        t = time.time()
        apply_seq_mse(sim, calib)
        stages["apply_seq_mse"] = time.time() - t
    t = time.time()
    sim.compute_encodings(calib)
    stages["compute_encodings"] = time.time() - t

    ev = np.load(job["eval"])["input"].astype(np.float32)
    result: dict = {"stages": stages}
    if task == "analyze":
        import onnxruntime as ort

        x = ev[:job["analyze_samples"]]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ref = sim_logits(ort.InferenceSession(job["model"], opts, providers=["CPUExecutionProvider"]), x)
        t = time.time()
        scores = analyze_per_layer_sensitivity(sim, lambda session: sqnr_db(ref, sim_logits(session, x)))
        stages["analyze_per_layer_sensitivity"] = time.time() - t
        result["sensitivity"] = {str(k): float(v) for k, v in scores.items()}
    result["work_done_at"] = time.time()
    result["cpu_at_work_done"] = sum(os.times()[:2])  # user + system of this process, all its threads
    result["started_at"] = T_START

    np.save(f"{job['out']}/logits.npy", sim_logits(sim.session, ev))
    sim.export(job["out"], "aimet", export_model=False)
    result["encodings"] = f"{job['out']}/aimet.encodings"
    result["aimet_onnx"] = aimet_onnx.__version__
    import torch

    result["torch"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
