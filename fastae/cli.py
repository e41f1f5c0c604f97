"""The ``fastae`` command line: ``fastae info | train | anomaly | compress | decompress | eval | bench``."""

import argparse
import sys
from pathlib import Path

import torch

import fastae
from fastae._device import resolve_device
from fastae.codec import DEFAULT_MODEL
from fastae.ops import _backend


def _triton_version():
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _describe_build(info):
    if not info.get("torch"):
        return info["load_error"]
    kind = f"CUDA {info['cuda']} (archs {info['cuda_arch_list'] or 'torch default'})" if info["cuda"] else "CPU only"
    if info.get("nvcc"):
        kind += f", nvcc {info['nvcc']}"
    state = "loaded" if info["loaded"] else f"NOT loaded: {info['load_error']}"
    return (f"{info.get('version', info['fastae'])} built against torch {info['torch']}, {kind}, "
            f"{info.get('compiler', 'compiler not recorded')}, C++11 ABI {int(info['cxx11_abi'])}; {state}")


# A module a command needs but this install lacks -> what installs it (main says so in one line).
_INSTALL = {"scipy": "'fastae[eval]'", "pytorch_msssim": "'fastae[eval]'", "pillow_heif": "'fastae[eval]'",
            "pillow_jxl": "'fastae[eval]'", "triton": "'fastae[triton]'", "constriction": "'fastae[bench]'",
            "pytest_benchmark": "'fastae[bench]'", "PIL": "pillow", "pyarrow": "'fastae[datasets]'",
            "ray": "'fastae[ray]'"}


def cmd_info(args):
    info = fastae.build_info()
    print(f"fastae     {fastae.__version__}")
    print(f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'}; "
          f"{torch.cuda.device_count()} CUDA device(s){': ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''})")
    print(f"triton     {_triton_version()}")
    print(f"fastae._C  {_describe_build(info)}")
    print(f"codec      {_describe_codecs()}")
    print("backends:")
    for name, (ok, reason) in fastae.ops.available_backends().items():
        print(f"  {name:<7}{'yes' if ok else 'no':<5}{reason}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("auto picks: " + ", ".join(f"{d} tensors -> {_backend.resolve(torch.device(d))}" for d in devices))
    if not args.check:
        return 0
    from fastae.ops._selfcheck import self_check

    print("self-check against the torch oracle (max error relative to the largest value):")
    failed = 0
    if info.get("torch") and not info["loaded"]:  # installed, but built for another torch/CUDA
        failed += 1
        print("  fastae._C   FAIL (installed but not loaded; see above)")
    for op, name, dtype, case, err, tol in self_check():
        ok = err <= tol
        failed += not ok
        print(f"  {op:<12}{name:<7}{str(dtype).removeprefix('torch.'):<9}{case:<11}{err:9.2e}  "
              f"{'ok' if ok else f'FAIL (tolerance {tol:.0e})'}")
    print(f"self-check: {'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def _describe_codecs() -> str:
    """The codec models shipped in the package (from their files; nothing is loaded)."""
    from fastae.codec.model_file import WEIGHTS_DIR, shipped_models

    models = shipped_models()
    if not models:
        return "no shipped model (fastae/codec/weights/ is empty); load_codec(weights=FILE) still works"
    return ", ".join(f"{m}{' (default)' if m == DEFAULT_MODEL else ''} "
                     f"{(WEIGHTS_DIR / (m + '.safetensors')).stat().st_size / 1e6:.1f} MB" for m in models)


# CLI option -> model config key, for the options that shape a model.
_MODEL_OPTIONS = {"loss": "loss", "latent": "latent", "hidden": "hidden", "latent_activation": "latent_activation",
                  "noise": "noise",
                  "noise_level": "noise_level", "sparsity": "sparsity", "sparsity_weight": "sparsity_weight",
                  "beta": "beta"}


def _load_data(args):
    from fastae.data import load_dataset

    x, labels = load_dataset(args.data, size=getattr(args, "size", None))
    if args.normal_class is not None:
        if labels is None:
            raise ValueError(f"--normal-class needs labelled data (MNIST IDX); {args.data} has no labels")
        if not (labels == args.normal_class).any():
            raise ValueError(f"--normal-class {args.normal_class}: no sample has that label "
                             f"(labels present: {sorted(set(labels.tolist()))})")
    return x, labels


def cmd_train_codec(args):
    from fastae.codec.model_file import export_codec
    from fastae.codec.format import check_model_id
    from fastae.models.codec import LAMBDAS
    from fastae.train import load_model
    from fastae.train.codec import train_codec

    lambdas = LAMBDAS if args.lmbda is None else args.lmbda
    out = Path(args.out)
    check_model_id(args.model_id)  # before training: it is written into every file the model makes
    if args.entropy_only and args.encoder_only:
        raise ValueError("--entropy-only and --encoder-only exclude each other: the first trains the entropy "
                         "networks with the encoder frozen, the second the encoder with the decoder frozen")
    if args.entropy_only:
        return _train_entropy(args)
    if args.encoder_only:
        return _train_encoder(args)
    encoder_options = _given(args.argv, _ENCODER_ONLY)
    if encoder_options:
        raise ValueError(f"{', '.join(encoder_options)} appl{'ies' if len(encoder_options) == 1 else 'y'} to "
                         f"--encoder-only training (widening the encoder of a codec file --init); pass --encoder-only")
    if args.integer or _given(args.argv, ["--pool"]):
        raise ValueError("--integer and --pool apply to --entropy-only training (fine-tuning the entropy networks "
                         "of a codec file --init); pass --entropy-only")
    history = train_codec(args.data, out, steps=args.steps, batch_size=_default(args.batch_size, 8), crop=args.crop,
                          lr=_default(args.lr, 3e-4), N=args.channels, M=_default(args.latent, 160), lambdas=lambdas,
                          downscale=args.downscale, device=args.device, seed=args.seed, resume=args.resume,
                          time_limit=args.time_limit, kind=args.kind, init=args.init,
                          compile=args.compile, stop_at=args.stop_at, hyper_input=args.hyper_input,
                          widths=args.widths, checkpoint_every=args.checkpoint_every,
                          quality_order=args.quality_order)
    weights = export_codec(load_model(out), out / "codec.safetensors", model_id=args.model_id,
                           weights_dtype=args.weights_dtype)
    last = {}
    for row in history:
        last[row["quality"]] = row
    for q, row in sorted(last.items()):
        print(f"quality {q}: bpp {row['bpp']:.3f}, PSNR {row['psnr']:.2f} dB (training crops, noise for rounding)")
    print(f"wrote {weights} (use it with: fastae compress SRC DST --weights {weights})")
    return 0


# What only --encoder-only training reads.
_ENCODER_ONLY = ("--analysis-widths", "--new-lr")
# What --entropy-only training does not read: it keeps the --init model's transforms and qualities.
_NOT_ENTROPY_ONLY = ("--lmbda", "--channels", "--latent", "--widths", "--kind", "--stop-at", "--compile",
                     "--hyper-input", "--resume")


def _check_fine_tune(args, flag: str, not_read, what: str, init: str):
    """Refuse the options a fine-tuning mode ``flag`` does not read, and a missing --init."""
    stray = _given(args.argv, not_read)
    if stray:
        raise ValueError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to {flag} ({what})")
    if args.init is None:
        raise ValueError(f"{flag} needs --init: {init}")


def _train_entropy(args):
    from fastae.train.entropy import train_entropy

    _check_fine_tune(args, "--entropy-only", _NOT_ENTROPY_ONLY + _ENCODER_ONLY,
                     "it fine-tunes the entropy networks of --init, keeping its transforms and qualities",
                     "the hyperprior or checkerboard codec file to fine-tune")
    weights = train_entropy(args.data, args.out, init=args.init, integer=args.integer, steps=args.steps,
                            batch_size=_default(args.batch_size, 8), crop=args.crop, crops=args.pool,
                            lr=_default(args.lr, 1e-4), downscale=args.downscale, seed=args.seed,
                            model_id=args.model_id, weights_dtype=args.weights_dtype, time_limit=args.time_limit,
                            progress=True)
    print(f"wrote {weights} (use it with: fastae compress SRC DST --weights {weights})")
    return 0


# What --encoder-only training does not read: it keeps the --init model's decoder and qualities.
_NOT_ENCODER_ONLY = _NOT_ENTROPY_ONLY + ("--integer", "--pool")


def _train_encoder(args):
    from fastae.train.encoder import train_encoder

    _check_fine_tune(args, "--encoder-only", _NOT_ENCODER_ONLY,
                     "it fine-tunes the encoder of --init, keeping its decoder and qualities",
                     "the codec file whose encoder to fine-tune")
    if args.new_lr is not None and args.analysis_widths is None:
        raise ValueError("--new-lr is the learning rate of the weights --analysis-widths adds; without it every "
                         "weight learns at --lr")
    weights = train_encoder(args.data, args.out, init=args.init, steps=args.steps,
                            batch_size=_default(args.batch_size, 2), crop=args.crop, lr=_default(args.lr, 2e-5),
                            downscale=args.downscale, seed=args.seed, model_id=args.model_id,
                            weights_dtype=args.weights_dtype if _given(args.argv, ["--weights-dtype"]) else None,
                            time_limit=args.time_limit, checkpoint_every=args.checkpoint_every,
                            quality_order=args.quality_order, analysis_widths=args.analysis_widths,
                            new_lr=args.new_lr, progress=True)
    print(f"wrote {weights} (use it with: fastae compress SRC DST --weights {weights})")
    return 0


def _int_list(text):
    """argparse type of --hidden: comma-separated layer widths."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 128 or 512,256, got {text!r}")


def _default(value, default):
    """An option's value, or ``default`` when it was not given (0 is a value, checked downstream)."""
    return default if value is None else value


# Options of `fastae train` that only one kind of training reads: given to the other, they are an error.
_ZOO_ONLY = ("--epochs", "--optimizer", "--weight-decay", "--amp", "--loss", "--hidden", "--latent-activation",
             "--noise", "--noise-level", "--sparsity", "--sparsity-weight", "--beta", "--val-fraction", "--normal-class",
             "--size")
_CODEC_ONLY = ("--lmbda", "--steps", "--crop", "--channels", "--widths", "--downscale", "--time-limit", "--kind", "--stop-at",
               "--compile", "--hyper-input", "--init", "--model-id", "--weights-dtype", "--entropy-only",
               "--encoder-only", "--integer", "--pool", "--quality-order", *_ENCODER_ONLY)


def _given(argv, options):
    """The options of ``options`` that appear in ``argv`` (as ``--opt`` or ``--opt=value``)."""
    return [o for o in options if any(a == o or a.startswith(o + "=") for a in argv)]


SPLIT = "split.json"  # in a zoo checkpoint: how `fastae train` split the data, for resuming and `fastae anomaly`
_SPLIT_OPTIONS = {"val_fraction": "--val-fraction", "seed": "--seed", "size": "--size"}


def _data_split(args, folder, strict: bool):
    """Take the split recorded in ``folder`` for the options not given. ``strict`` (a resumed
    training): an option given with another value than recorded is refused; otherwise (anomaly,
    which may score another part of the data) the given value wins."""
    from fastae._io import read_json

    path = Path(folder) / SPLIT
    if not path.exists():
        return
    recorded = read_json(path)
    for key, option in _SPLIT_OPTIONS.items():
        if key not in recorded:
            continue
        if _given(args.argv, [option]):
            if strict and getattr(args, key) != recorded[key]:
                raise ValueError(f"{option} {getattr(args, key)}: {folder} was trained with {option} {recorded[key]} "
                                 f"(recorded in {path}); leave it out to use the same split")
            continue
        setattr(args, key, recorded[key])


def cmd_train(args):
    import inspect
    import json

    from fastae._io import write_text

    codec = args.model == "codec"
    stray = _given(args.argv, _ZOO_ONLY if codec else _CODEC_ONLY)
    if stray:
        other = "the autoencoder zoo (mlp, conv, vae, ...)" if codec else "train codec"
        raise ValueError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to train "
                         f"{args.model} (only to {other})")
    if codec:
        return cmd_train_codec(args)

    from fastae.data import train_val_split
    from fastae.models import MODELS, build_model
    from fastae.train import fit, plots
    from fastae.train.checkpoint import STATE, WEIGHTS

    out = Path(args.out)
    if not args.resume and ((out / WEIGHTS).exists() or (out / STATE).exists()):
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    if args.resume:
        _data_split(args, out, strict=True)
    x, labels = _load_data(args)
    train_idx, val_idx = train_val_split(len(x), args.val_fraction, args.seed)
    if args.normal_class is not None:  # anomaly detection: learn the normal class only
        train_idx = train_idx[labels[train_idx] == args.normal_class]
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"--val-fraction {args.val_fraction} of {len(x)} samples leaves {len(train_idx)} to train on "
                         f"and {len(val_idx)} to validate on (the validation loss and the plots need at least one); "
                         f"use e.g. 0.1 and more data")
    write_text(out / SPLIT, json.dumps({k: getattr(args, k) for k in _SPLIT_OPTIONS}) + "\n")
    config = {"input_shape": list(x.shape[1:])}
    accepted = inspect.signature(MODELS[args.model]).parameters
    for option, key in _MODEL_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if key not in accepted:
            raise ValueError(f"--{option.replace('_', '-')} does not apply to model {args.model!r}")
        config[key] = value
    torch.manual_seed(args.seed)  # the initial weights too: a run is repeatable from its command
    model = build_model(args.model, **config)
    history = fit(model, x[train_idx], x[val_idx], epochs=args.epochs, batch_size=_default(args.batch_size, 256),
                  optimizer=args.optimizer, lr=_default(args.lr, 1e-3), weight_decay=args.weight_decay,
                  amp=args.amp, device=args.device, seed=args.seed, out=out, resume=args.resume)
    model.eval()
    val_x = x[val_idx].to(next(model.parameters()).device)
    with torch.no_grad():
        recon = model(val_x[:10])
        codes = model.encode(val_x)
    plots.plot_loss(history, out / "loss.png")
    plots.plot_reconstructions(val_x[:10].cpu(), recon.cpu(), out / "reconstructions.png")
    plots.plot_latent(codes.cpu(), None if labels is None else labels[val_idx], out / "latent.png")
    if hasattr(model, "sample"):
        with torch.no_grad():
            plots.plot_images(model.sample(64).cpu(), out / "samples.png")
            if model.config.get("latent") == 2:
                plots.plot_images(model.manifold(20).cpu(), out / "manifold.png", nrow=20)
    last = {k: v[-1] for k, v in history.items()} if history else {}
    print(f"{args.model} at epoch {len(history.get('train_loss', []))}: " +
          ", ".join(f"{k} {v:.5g}" for k, v in last.items() if k.startswith(("train_loss", "val_"))))
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))} to {out}")
    return 0


def cmd_anomaly(args):
    from fastae import anomaly
    from fastae.data import train_val_split
    from fastae.train import load_model
    from fastae.train.checkpoint import read_config

    if not 0 < args.quantile < 1:
        raise ValueError(f"--quantile must be in (0, 1), got {args.quantile}")
    read_config(args.model_dir)  # a folder without a checkpoint fails here, before the data is read
    _data_split(args, args.model_dir, strict=False)  # the held-out samples training recorded, unless given
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1) (0: score every sample), got {args.val_fraction}")
    model = load_model(args.model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    x, labels = _load_data(args)
    if args.val_fraction > 0:  # the samples `fastae train` held out with the same seed and fraction
        held_out = train_val_split(len(x), args.val_fraction, args.seed)[1]
        if len(held_out) == 0:
            raise ValueError(f"--val-fraction {args.val_fraction} of {len(x)} samples holds none out; use the "
                             f"fraction training used (default 0.1) or 0 to score every sample")
        x, labels = x[held_out], None if labels is None else labels[held_out]
    scores = anomaly.scores(model, x)
    print(f"{len(x)} samples: score mean {scores.mean():.5g}, median {scores.median():.5g}, max {scores.max():.5g}")
    if args.normal_class is None:
        print(f"threshold (quantile {args.quantile}): {anomaly.fit_threshold(scores, args.quantile):.5g}")
        return 0
    is_anomaly = labels != args.normal_class
    threshold = anomaly.fit_threshold(scores[~is_anomaly], args.quantile)
    result = anomaly.evaluate(model, x, is_anomaly, threshold)
    print(f"normal class {args.normal_class}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
    return 0


def _codec_factory(args):
    from fastae.codec.api import CodecFactory

    device = resolve_device(args.device, "--device")
    # fails now, with a clear message, on an unknown model, quality or weights file
    return CodecFactory(quality=getattr(args, "quality", None), model=args.model, device=device, weights=args.weights,
                        refine=getattr(args, "refine", 0), side_search=getattr(args, "side_search", True),
                        precision=args.precision)


def _engine_options(args):
    return dict(input_format=args.input_format, column=args.column, engine=args.engine, workers=args.workers,
                gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size, ray_address=args.ray_address,
                force=args.force, progress=not args.quiet)


def _report(summary):
    print(summary.format())
    for where, reason in summary.failed:  # stdout has them in the summary; stderr for logs that keep only it
        print(f"fastae: failed: {where}: {reason}", file=sys.stderr)
    return 0 if summary.ok else 1


def cmd_compress(args):
    from fastae.datasets import compress_dataset

    return _report(compress_dataset(args.src, args.dst, make_codec=_codec_factory(args), format=args.format,
                                    images_per_file=args.images_per_file, **_engine_options(args)))


def cmd_decompress(args):
    from fastae.datasets import decompress_dataset

    return _report(decompress_dataset(args.src, args.dst, make_codec=_codec_factory(args), to=args.to,
                                      **_engine_options(args)))


def cmd_eval(args):
    from fastae.codec.eval_command import run

    return run(args, _codec_factory)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, how fastae._C was built, which backends are available")
    info.add_argument("--check", action="store_true", help="also test every available backend against the oracle")
    info.set_defaults(func=cmd_info)

    from fastae.models import MODELS
    from fastae.train import OPTIMIZERS

    # no abbreviations: an option of the other kind of training must be recognised (`_given`), not guessed
    train = sub.add_parser("train", help="train an autoencoder on MNIST IDX files or an image folder",
                           allow_abbrev=False)
    train.add_argument("model", choices=sorted(MODELS) + ["codec"],
                       help="a zoo model, or codec: the learned image codec (random crops of a photo folder)")
    train.add_argument("--data", required=True, help="a folder of MNIST IDX files (e.g. ../shared/data/mnist) or images")
    train.add_argument("--out", required=True, help="folder for model.safetensors, config.json, history.json, plots")
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--batch-size", type=int, help="default 256 (codec: 8; --encoder-only 2)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    train.add_argument("--lr", type=float, help="default 1e-3 (codec: 3e-4; --entropy-only 1e-4; --encoder-only 2e-5)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="L2 regularisation")
    train.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                       help="mixed precision: autocast to bf16 or fp16; auto: bf16 on a GPU that has it, off on the CPU")
    train.add_argument("--loss", choices=["mse", "bce"])
    train.add_argument("--latent", type=int)
    train.add_argument("--hidden", type=_int_list, help="e.g. 128 or 512,256")
    train.add_argument("--latent-activation", help="activation of the code layer (mlp: relu; none gives a linear code)")
    train.add_argument("--noise", choices=["gaussian", "masking", "salt_pepper"], help="denoising: the corruption")
    train.add_argument("--noise-level", type=float)
    train.add_argument("--sparsity", choices=["l1", "kl"], help="sparse: the penalty")
    train.add_argument("--sparsity-weight", type=float)
    train.add_argument("--beta", type=float, help="vae: weight of the KL term")
    train.add_argument("--size", type=int, help="image folders: scale each image's shorter side to SIZE and "
                                                 "center-crop it to SIZE x SIZE (needed when the sizes differ)")
    train.add_argument("--val-fraction", type=float, default=0.1)
    train.add_argument("--normal-class", type=int, help="train on this label only (anomaly detection)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    codec = train.add_argument_group("codec", "options of `fastae train codec` (--latent: latent channels M)")
    codec.add_argument("--lmbda", type=float, nargs="+",
                       help="rate-distortion weight(s), one per quality (default: the 8 of the shipped model)")
    codec.add_argument("--steps", type=int, default=24000, help="training steps (one quality per step, in turn)")
    codec.add_argument("--crop", type=int, default=128, help="random crop size")
    codec.add_argument("--channels", type=int, default=96, help="transform channels N (and hyper-latent channels)")
    codec.add_argument("--widths", type=int, nargs=3, metavar=("W2", "W4", "W8"),
                       help="the transforms' channels at 1/2, 1/4 and 1/8 of the image size (default N at each)")
    codec.add_argument("--downscale", type=int, default=2, help="shrink the photos by this factor first")
    codec.add_argument("--time-limit", type=float, help="seconds; stop after a checkpoint (continue with --resume)")
    codec.add_argument("--checkpoint-every", type=int, default=250, metavar="STEPS",
                       help="write a checkpoint (and a training-history row per quality) every STEPS steps")
    codec.add_argument("--kind", choices=["factorized", "hyperprior", "checkerboard"], default="factorized",
                       help="entropy model: per-channel factorized, a mean-scale hyperprior, or the hyperprior with a "
                            "checkerboard context (the last two: crop a multiple of 64)")
    codec.add_argument("--stop-at", type=int, metavar="STEP",
                       help="stop after this step, the learning rate still following --steps")
    codec.add_argument("--quality-order", type=int, nargs="+", metavar="Q",
                       help="the qualities the steps train, in a cycle (default 1 2 ... one per --lmbda); repeat "
                            "some to train them more often")
    codec.add_argument("--compile", action="store_true",
                       help="torch.compile the training step (compiles for a few minutes, then faster steps)")
    codec.add_argument("--hyper-input", choices=["noise", "rounded"], default="noise",
                       help="what the hyper-synthesis reads in training: the hyper-latents plus uniform noise, or "
                            "rounded (straight-through) as at inference")
    codec.add_argument("--init", help="start from the transforms of this checkpoint folder or codec file (a narrower "
                                      "model of the same kind is widened to this one, coding as it did)")
    codec.add_argument("--model-id", default="fastae-codec-custom", help="model id written into .fae files")
    codec.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32",
                       help="precision of the convolution weights in the exported codec.safetensors (float16: "
                            "half the file; the tables are derived from the rounded weights; --encoder-only: that of --init)")
    codec.add_argument("--entropy-only", action="store_true",
                       help="fine-tune only the entropy networks (h_s, context) of the hyperprior codec file --init, "
                            "its transforms frozen, on the latents' rate (fastae.train.entropy)")
    codec.add_argument("--encoder-only", action="store_true",
                       help="fine-tune only the encoder (g_a, h_a, gains) of the codec file --init against its frozen "
                            "decoder: files it writes decode exactly as --init's would (fastae.train.encoder)")
    codec.add_argument("--analysis-widths", type=int, nargs=3, metavar=("A2", "A4", "A8"),
                       help="with --encoder-only: widen --init's analysis transform to these channels at 1/2, 1/4 "
                            "and 1/8 first (decoding time unchanged, encoding pays)")
    codec.add_argument("--new-lr", type=float,
                       help="with --analysis-widths: learning rate of the new weights (default 10x --lr)")
    codec.add_argument("--integer", action="store_true",
                       help="with --entropy-only: convert them to integer networks first (same tables on every "
                            "device) and train them quantization-aware")
    codec.add_argument("--pool", type=int, default=1024,
                       help="with --entropy-only: random crops whose latents are computed once and trained on")
    train.set_defaults(func=cmd_train)

    anomaly = sub.add_parser("anomaly", help="score samples by reconstruction error with a trained model",
                             allow_abbrev=False)
    anomaly.add_argument("model_dir", help="a folder written by `fastae train`")
    anomaly.add_argument("--data", required=True)
    anomaly.add_argument("--size", type=int, help="image folders: as `fastae train --size` (default: as recorded)")
    anomaly.add_argument("--normal-class", type=int, help="label of the normal class: reports ROC-AUC")
    anomaly.add_argument("--quantile", type=float, default=0.99, help="threshold: this quantile of normal scores")
    anomaly.add_argument("--val-fraction", type=float, default=0.1,
                         help="score the samples training held out (default: the fraction training recorded in "
                              "split.json, else 0.1); 0: score all")
    anomaly.add_argument("--seed", type=int, default=0, help="the seed training split the data with (default: as "
                                                             "recorded)")
    anomaly.set_defaults(func=cmd_anomaly)

    def codec_options(p, quality=True, encoder=True):
        if quality:
            p.add_argument("--quality", type=int, help="1 (smallest) .. 8 (best); default 4 (or a custom model's highest)")
        if encoder:
            p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                           help="encoder-side latent refinement steps per image (0: off; e.g. 50): smaller files "
                                "or better images from the same decoder, each step costing about two decodes")
            p.add_argument("--no-side-search", dest="side_search", action="store_false",
                           help="code the analysis' own hyper-latents even where they predict some latents very "
                                "badly (default: search better ones for such an image; see README)")
        p.add_argument("--model", default=DEFAULT_MODEL, help=f"a codec shipped in the package (default {DEFAULT_MODEL})")
        p.add_argument("--weights", help="a codec file written by `fastae train codec` instead of --model")
        p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
        p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                       help="of the analysis and synthesis transforms (auto: bfloat16 where the hardware computes it "
                            "natively); float32 decodes to exactly the pixels of earlier versions; files decode "
                            "whatever either side used")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def dataset_options(p):
        p.add_argument("--input-format", choices=["folder", "parquet", "webdataset"],
                       help="the kind of SRC (default: detected from it)")
        p.add_argument("--column", help="Parquet: the image column (default: found by name or type)")
        p.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this machine (--workers processes); ray: a Ray Data pipeline (pip install "
                            "'fastae[ray]')")
        p.add_argument("--workers", type=int, default=1, help="processes (local) or actors (ray)")
        p.add_argument("--gpus-per-worker", type=float, default=0, help="ray: GPUs of each actor (with --device cuda)")
        p.add_argument("--batch-size", type=int,
                       help="local: folder images coded together (default 1; batching pays on a GPU, not on a CPU); "
                            "ray: folder images per task (default 8; Parquet files and shards go one per task)")
        p.add_argument("--ray-address", help="ray: join this running cluster (default: start a local one)")

    compress = sub.add_parser("compress", help="compress the images of a folder, Parquet files or WebDataset shards "
                                               "(SRC) into the same kind of files under DST")
    compress.add_argument("src", help="a folder of images, a .parquet file or a folder of them, a .tar shard, a "
                                      "folder of shards or a pattern such as 'shard-{000..009}.tar'")
    compress.add_argument("dst")
    codec_options(compress)
    dataset_options(compress)
    compress.add_argument("--format", choices=["folder", "parquet", "webdataset"],
                          help="the kind of output (default: the input's): a folder of images packs into Parquet "
                               "files or shards, Parquet files and shards convert into each other or into folders")
    compress.add_argument("--images-per-file", type=int, default=1000,
                          help="with --format parquet|webdataset from a folder: images in each output file")
    compress.add_argument("--force", action="store_true", help="redo and overwrite files that are already there")
    compress.set_defaults(func=cmd_compress)

    decompress = sub.add_parser("decompress", help="decode the .fae images of a folder, Parquet files or shards "
                                                   "(SRC) to PNG under DST")
    decompress.add_argument("src")
    decompress.add_argument("dst")
    codec_options(decompress, quality=False, encoder=False)
    dataset_options(decompress)
    decompress.add_argument("--to", choices=["png", "npy"], default="png",
                            help="PNG images or .npy arrays (H x W x C uint8)")
    decompress.add_argument("--force", action="store_true",
                            help="redo and overwrite PNGs that are already there (with DST = the folder of the "
                                 "originals, that replaces them with their decoded copies)")
    decompress.set_defaults(func=cmd_decompress)

    evaluate = sub.add_parser("eval", help="rate-distortion of the codec on an image folder against JPEG, WebP, AVIF, "
                                           "HEIC and JPEG XL")
    evaluate.add_argument("--data", required=True, help="e.g. ../shared/data/kodak")
    codec_options(evaluate, quality=False)
    evaluate.add_argument("--qualities", type=int, nargs="+", help="default: every quality of the model (1..8)")
    evaluate.add_argument("--references", nargs="*", default=["webp", "jpeg"], choices=["webp", "jpeg", "avif", "heic", "jxl"],
                          help="classic codecs measured in the same run (heic, jxl: pip install 'fastae[eval]')")
    evaluate.add_argument("--limit", type=int, help="only the first N images")
    evaluate.add_argument("--output", default="rd.json", help="per-image JSON (the plot goes beside it as .png)")
    evaluate.add_argument("--plot", help="RD plot path (default: --output with .png)")
    evaluate.add_argument("--compare", nargs="+", metavar="JSON",
                          help="earlier `fastae eval` results (other models, same images): plotted, with BD-rate against each")
    evaluate.set_defaults(func=cmd_eval)

    from fastae.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from fastae._malloc import keep_freed_memory_unless_disabled

    keep_freed_memory_unless_disabled()  # no page faults for each new large tensor (fastae._malloc)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as e:  # bad input: say what, no traceback
        print(f"fastae {args.command}: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a library this install lacks: which, and what installs it
        if e.name is None:  # raised by fastae with its own message (e.g. a reference codec's plugin)
            print(f"fastae {args.command}: {e}", file=sys.stderr)
            return 1
        module = e.name.split(".")[0]
        if module == "fastae":  # fastae's own modules are never optional: a bug, keep its traceback
            raise
        print(f"fastae {args.command}: needs {module}, which is not installed: pip install "
              f"{_INSTALL.get(module, module)}", file=sys.stderr)
        return 1
    except OSError as e:  # a folder not writable, a path that is a folder, a disk full: say which, no traceback
        print(f"fastae {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = " (finished files are kept: run it again to continue)" if args.command in ("compress", "decompress") else ""
        print(f"fastae {args.command}: interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
