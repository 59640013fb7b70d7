"""Command line: ``python -m core {datasets,train,evaluate,project,anounet,bench} ...``.

Exit code 0 on success; 2 with a one-line reason on stderr for bad input; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import fields
from pathlib import Path

from core.data.index import DatasetError
from core.images import ImageError
from core.runs import RunError

USER_ERRORS = (DatasetError, ImageError, RunError, ValueError, FileNotFoundError, PermissionError, FloatingPointError)


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_datasets(args: argparse.Namespace) -> int:
    from core.data.builtin import all_datasets

    rows = all_datasets()
    if args.json:
        print(json.dumps([{"data": spec, "categories": cats} for spec, cats in rows]))
        return 0
    for spec, cats in rows:
        print(f"{spec}\n    categories: {', '.join(cats)}")
    return 0


def _train_config(args: argparse.Namespace):
    from core.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return TrainConfig(**given)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.train import fit

    cfg = _train_config(args)
    cfg.validate()
    stop = threading.Event()
    bar = None  # created once the data is loaded, so an error message is not mixed with a bar

    def on_progress(p) -> None:
        nonlocal bar
        if p.phase == "start":
            bar = tqdm(total=cfg.epochs, initial=p.epoch, unit="epoch", file=sys.stderr, dynamic_ncols=True, disable=args.quiet)
        elif p.phase == "epoch" and bar is not None:
            bar.update(p.epoch - bar.n)
            bar.set_postfix(train=f"{p.train_loss:.4g}", val=f"{p.val_loss:.4g}", best=f"{p.best_val_loss:.4g}")

    try:
        run_dir = fit(cfg, Path(args.out) if args.out else None, progress=on_progress, stop=stop, resume=args.resume)
    except KeyboardInterrupt:
        stop.set()
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    from core.runs import read_history

    hist = read_history(run_dir)
    print(f"run: {run_dir}")
    print(f"status: {hist.get('status')}  best epoch: {hist.get('best_epoch')}  best val loss: {_fmt(hist.get('best_val_loss'))}")
    if not args.no_eval:
        from core.fnet import evaluate_any  # the f-Net has its own evaluation (distance to C)

        m = evaluate_any(run_dir, device=cfg.device)
        print(f"image AUROC: {_fmt(m['image_auroc'])}  pixel AUROC: {_fmt(m['pixel_auroc'])}  AUPRO: {_fmt(m['aupro'])}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.fnet import evaluate_any

    rule = {k: getattr(args, k, None) for k in ("rule", "target_fpr", "target_tpr", "cost_fp", "cost_fn", "cost_review")}
    extended = any(v is not None for v in rule.values()) or args.detector != "auto" or args.labels != "dataset"
    if extended:
        from core.explorer import check_rule_options, evaluate_with_rule

        check_rule_options(**rule)  # fail fast, before scoring
    m = evaluate_any(args.run_dir, device=args.device, strips=not args.no_strips)
    if extended:
        m = evaluate_with_rule(args.run_dir, m, detector=args.detector, device=args.device, labels=args.labels, **rule)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "skipped"}))
    else:
        extra = ("rule", "tp", "fp", "tn", "fn", "tpr", "fpr", "precision", "f1", "cost_per_1000") if m.get("rule") else ()
        for key in ("image_auroc", "average_precision", "f1_max", "threshold", "pixel_auroc", "aupro", "n_images", "n_defective", *extra):
            print(f"{key:>18}: {_fmt(m.get(key))}")
        if m.get("n_skipped"):
            print(f"skipped {m['n_skipped']} unreadable file(s):", file=sys.stderr)
            for path, reason in m["skipped"]:
                print(f"  {path}: {reason}", file=sys.stderr)
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from core.projection import ProjectionConfig, evaluate_projection

    cfg = ProjectionConfig(steps=args.steps, alpha=args.alpha, lam=args.lam, map_mode=args.map, precision=args.precision)
    m = evaluate_projection(args.run_dir, cfg, images=args.images, limit=args.limit, gif=args.gif,
                            batch_size=args.batch_size, device=args.device)
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{m['n_images']} image(s), {cfg.steps} steps, alpha {cfg.alpha}, lambda {cfg.lam}: {m['seconds']:.1f} s"
              + (f", {m['n_diverged']} diverged" if m["n_diverged"] else ""))
        print(f"energy: {_fmt(m['energy'][0])} -> {_fmt(m['energy'][-1])}")
        for key in ("pixel_auroc", "aupro", "image_auroc"):
            print(f"{key:>12}: projection {_fmt(m[key])}   reconstruction {_fmt(m[key + '_reconstruction'])}")
        if m.get("gif"):
            print(f"GIF ({m['gif_frames']} frames): {m['gif']}")
    return 0


def cmd_anounet(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.anounet import AnoUnetConfig, evaluate_anounet

    cfg = AnoUnetConfig(beta=args.beta, epochs=args.epochs, batch=args.batch, lr=args.lr, early_stop=not args.no_early_stop,
                        guard=not args.no_guard, min_epochs=args.min_epochs, window=args.window,
                        base_channels=args.base_channels, levels=args.levels, residual=args.residual,
                        precision=args.precision, seed=args.seed)
    cfg.validate()
    stop = threading.Event()
    bar = None

    def on_progress(p) -> None:
        nonlocal bar
        if p.phase == "start":
            bar = tqdm(total=p.total, initial=p.done, unit="img", file=sys.stderr, dynamic_ncols=True, disable=args.quiet)
        elif bar is not None and p.phase == "epoch":
            bar.update(p.done - bar.n)
            if p.slots:
                bar.set_postfix(epoch=max(s.epoch for s in p.slots), L_R=f"{p.slots[0].loss_r:.4g}", L_C=f"{p.slots[0].loss_c:.3g}")

    def on_warm(p) -> None:
        if p.phase == "start" and not args.quiet:
            print(f"training the warm-start U-Net once (kept in {p.run_dir})", file=sys.stderr)

    try:
        m = evaluate_anounet(args.fnet_run, cfg, images=args.images, limit=args.limit, out=args.out, warm_start=args.warm_start,
                             compare=args.compare, device=args.device, cache=not args.no_cache, progress=on_progress,
                             stop=stop, warm_progress=on_warm)
    except KeyboardInterrupt:
        stop.set()
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(m))
        return 0
    print(f"{m['n_done']} image(s) ({m['n_cached']} from the cache), beta {cfg.beta}, up to {cfg.epochs} epochs, K={cfg.batch}: "
          f"{m['seconds']:.1f} s, {m['seconds_per_image']:.2f} s per image computed, ~{m['memory_per_image_mb']:.1f} MB per image in flight")
    print(f"stopped: {', '.join(f'{k} {v}' for k, v in sorted(m['stop_reasons'].items()))}; mean epochs {_fmt(m['mean_epochs'])}")
    for key in ("pixel_auroc", "aupro", "image_auroc", "image_auroc_fnet"):
        extra = f"   {m.get('compare_run')}: {_fmt(m[key + '_compare'])}" if key + "_compare" in m else ""
        print(f"{key:>16}: {_fmt(m[key])}{extra}")
    print(f"maps: {m['out']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from core import bench

    epochs = args.epochs if args.epochs is not None else (30 if args.what == "anounet" else 2)
    result = bench.run(args.what, data=args.data, category=args.category, size=args.size, epochs=epochs,
                       batch_size=args.batch_size, quality_epochs=args.quality_epochs, steps=args.steps,
                       k=args.batch, fnet=args.fnet)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="AnomalyLab: unsupervised visual anomaly detection.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list built-in and configured datasets with their categories")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)

    t = sub.add_parser("train", help="train an AE, VAE, U-Net or f-Net (Ano-Unet feature extractor) on the normal training images")
    t.add_argument("--data", default="builtin:synthetic", help="builtin:synthetic, builtin:digits or a folder")
    t.add_argument("--category", help="category (default: the first one)")
    t.add_argument("--model", choices=["ae", "vae", "fnet", "unet"], default="ae",
                   help="fnet: the Ano-Unet feature extractor; unet: a reconstruction U-Net (Ano-Unet warm start)")
    t.add_argument("--size", type=int, help="image side in px (default 128)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--z-dim", dest="z_dim", type=int, help="VAE latent size")
    t.add_argument("--base-channels", dest="base_channels", type=int, help="width of the first block")
    t.add_argument("--depth", type=int, help="AE encoder blocks")
    t.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    t.add_argument("--seed", type=int)
    t.add_argument("--data-seed", dest="data_seed", type=int, help="seed of the built-in synthetic data")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    t.add_argument("--augment", action="store_true", default=None, help="random crops and flips")
    t.add_argument("--crop-scale", dest="crop_scale", type=float)
    t.add_argument("--max-minutes", dest="max_minutes", type=float, help="stop after this much training time")
    t.add_argument("--score", dest="score_mode", choices=["mean", "max", "topk", "sum"])
    t.add_argument("--smooth-sigma", dest="smooth_sigma", type=float)
    t.add_argument("--embed-dim", dest="fnet_embed_dim", type=int, help="fnet: embedding size (default 64)")
    t.add_argument("--fnet-stages", dest="fnet_stages", type=int, help="fnet: conv stages of the small backbone (default 5)")
    t.add_argument("--fnet-alpha", dest="fnet_alpha", type=float, help="fnet: L2-constrained softmax scale (default 16)")
    t.add_argument("--fnet-loss", dest="fnet_loss", choices=["l2softmax", "doc"], help="fnet: metric-learning loss")
    t.add_argument("--references", dest="fnet_references",
                   help="fnet: comma-separated 'other' image sources (default paste,synthetic,digits,textures)")
    t.add_argument("--backbone", choices=["small", "mobilenet_v2"], help="fnet: backbone (mobilenet_v2 needs local ImageNet weights)")
    t.add_argument("--backbone-weights", dest="backbone_weights", help="fnet: MobileNetV2 weight file (never downloaded)")
    t.add_argument("--unet-levels", dest="unet_levels", type=int, help="unet: resolution levels (default 3)")
    t.add_argument("--out", help="run folder (default: <workspace>/runs/<id>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-eval", action="store_true", help="skip scoring the test split after training")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a run's test split; write metrics.json, scores.csv, strips/")
    e.add_argument("run_dir")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-strips", action="store_true", help="do not write heatmap strips")
    e.add_argument("--rule", choices=["f1", "youden", "fpr", "tpr", "cost"],
                   help="choose the threshold by a rule and report the metrics at it (see core.explorer)")
    e.add_argument("--target-fpr", dest="target_fpr", type=float, help="--rule fpr: largest share of good parts flagged")
    e.add_argument("--target-tpr", dest="target_tpr", type=float, help="--rule tpr: smallest share of defects caught")
    e.add_argument("--cost-fp", dest="cost_fp", type=float, help="cost of a false alarm")
    e.add_argument("--cost-fn", dest="cost_fn", type=float, help="cost of a miss")
    e.add_argument("--cost-review", dest="cost_review", type=float, help="cost of reviewing a flagged part (default 0)")
    e.add_argument("--labels", choices=["dataset", "mine", "merged"], default="dataset",
                   help="labels to measure with: the dataset's folders, the label store's (python -m core labels), or "
                        "the store's where present, else the dataset's")
    e.add_argument("--detector", choices=["auto", "reconstruction", "projection", "fnet", "anounet"], default="auto",
                   help="scores to choose on (projection: the iterative projection's maps; cached in RUN/scored/)")
    e.set_defaults(func=cmd_evaluate)

    from core.projection import ProjectionConfig

    pdef = ProjectionConfig()
    pr = sub.add_parser("project", help="iterative energy-based projection of test images (Dehaene et al. 2020)")
    pr.add_argument("run_dir")
    pr.add_argument("--steps", type=int, default=pdef.steps)
    pr.add_argument("--alpha", type=float, default=pdef.alpha, help="step size")
    pr.add_argument("--lambda", dest="lam", type=float, default=pdef.lam, help="weight of ||x - x0||_1 in the energy")
    pr.add_argument("--map", choices=["projection", "combined"], default=pdef.map_mode,
                    help="anomaly map: |x_T - x0|, or that plus the reconstruction error at x_T")
    pr.add_argument("--images", nargs="+", help="test image paths (absolute or relative to the category folder) or defect types")
    pr.add_argument("--limit", type=int, help="at most this many images")
    pr.add_argument("--gif", help="write an animated GIF (one frame per step; step 0 is the input)")
    pr.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    pr.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=pdef.precision,
                    help="the model's forward/backward (auto: bf16 on a CPU with native bf16, fp16/bf16 on CUDA)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(func=cmd_project)

    from core.anounet import AnoUnetConfig

    adef = AnoUnetConfig()
    a = sub.add_parser("anounet", help="Ano-Unet: optimize a U-Net per test image against a frozen f-Net; one map per image")
    a.add_argument("fnet_run", help="an f-Net run (python -m core train --model fnet ...)")
    a.add_argument("--images", nargs="+", help="test image paths (absolute or relative to the category folder), defect types, or image files")
    a.add_argument("--limit", type=int, help="at most this many images, spread evenly over the defect types")
    a.add_argument("--beta", type=float, default=adef.beta, help="weight of sum|F(G(x)) - C| in the loss")
    a.add_argument("--epochs", type=int, default=adef.epochs, help="maximum Adam steps per image")
    a.add_argument("--batch", type=int, default=adef.batch, help="K: images optimized at once, each with its own U-Net")
    a.add_argument("--lr", type=float, default=adef.lr)
    a.add_argument("--warm-start", dest="warm_start", default="none",
                   help="none (as the article), auto (train a reconstruction U-Net once, kept in the f-Net run) or a unet run")
    a.add_argument("--no-early-stop", action="store_true", help="always run --epochs (no plateau stop)")
    a.add_argument("--no-guard", action="store_true", help="no adversarial guard")
    a.add_argument("--min-epochs", dest="min_epochs", type=int, default=adef.min_epochs)
    a.add_argument("--window", type=int, default=adef.window, help="epochs over which plateau and guard are judged")
    a.add_argument("--base-channels", dest="base_channels", type=int, default=adef.base_channels, help="U-Net width")
    a.add_argument("--levels", type=int, default=adef.levels, help="U-Net levels")
    a.add_argument("--residual", action=argparse.BooleanOptionalAction, default=adef.residual,
                   help="G starts as the identity and learns a change (sigmoid(logit(x) + U-Net)); --no-residual: the article's plain U-Net")
    a.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=adef.precision)
    a.add_argument("--seed", type=int, default=adef.seed)
    a.add_argument("--out", help="output folder (default <fnet run>/anounet/<time>)")
    a.add_argument("--compare", help="a reconstruction run (e.g. the AE) scored on the same test images")
    a.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    a.add_argument("--device", default="auto")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_anounet)

    b = sub.add_parser("bench", help="benchmarks (ratios against a reference in the same run)")
    b.add_argument("what", choices=["train", "project", "anounet", "threshold"])
    b.add_argument("--data", default="builtin:synthetic")
    b.add_argument("--category")
    b.add_argument("--size", type=int, default=128)
    b.add_argument("--epochs", type=int, default=None, help="timed epochs per loop (train: 2, anounet: 30)")
    b.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    b.add_argument("--quality-epochs", dest="quality_epochs", type=int, default=0,
                   help="train: also train both loops this many epochs and compare image AUROC (0 = skip)")
    b.add_argument("--steps", type=int, default=10, help="project: projection steps")
    b.add_argument("--batch", type=int, default=8, help="anounet: K images optimized at once")
    b.add_argument("--fnet", help="anounet: an f-Net run (default an untrained f-Net: timing does not depend on weights)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    from core.labels_cli import add_labels_parser  # labels export|import|stats (functions in core/labels_cli.py)

    add_labels_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
