"""The commands of ``python -m core`` that need torch: datasets, train, detectors, evaluate, project, anounet, bench.

Each ``cmd_*`` takes the parsed arguments (:func:`core.cli.main.build_parser`) and returns the exit code;
:func:`core.cli.main.main` imports this module only when one of these commands runs, so that
``python -m core labels ...`` starts without importing torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from core.cli import bench
from core.cli.bench_app import bench_app_load
from core.config import FEATURE_MODELS, AnoUnetConfig, ProjectionConfig, TrainConfig
from core.data.builtin import all_datasets, open_dataset
from core.data.report import data_report
from core.detectors import registry as detectors
from core.errors import ConfigError
from core.evaluation.anounet import evaluate_anounet
from core.evaluation.curves import check_rule_options
from core.evaluation.evaluate import evaluate_run, evaluate_with_rule
from core.evaluation.projection import evaluate_projection
from core.runs import CONFIG_FILE, read_history, read_json, run_model
from core.services.report import write_pdf, write_report
from core.training import distributed
from core.training.loop import fit

T = TypeVar("T")


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = all_datasets()
    if args.json:
        print(json.dumps([{"data": spec, "categories": cats} for spec, cats in rows]))
        return 0
    for spec, cats in rows:
        print(f"{spec}\n    categories: {', '.join(cats)}")
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    rep = data_report(open_dataset(args.data, args.category))
    if args.json:
        print(json.dumps(rep))
        return 0
    ch, masks = rep["channels"], rep["masks"]
    print(f"{rep['root']} ({rep['layout']}, category {rep['category']})")
    for split, defects in rep["counts"].items():
        print(f"  {split}: " + ", ".join(f"{d} {n}" for d, n in defects.items()))
    print(f"  channels: train {ch['train_color']} colour / {ch['train_gray']} gray, test {ch['test_color']} colour / "
          f"{ch['test_gray']} gray; a run uses {'RGB' if ch['run_channels'] == 3 else 'gray'}")
    print(f"  masks: {masks['binary']} binary, {masks['non_binary']} non-binary, {masks['unreadable']} unreadable")
    for m in masks["non_binary_files"]:
        print(f"    {m['file']}: {m['share_between']:.1%} of its pixels between the two levels")
    print(f"  skipped: {len(rep['skipped'])} file(s)")
    for item in rep["skipped"]:
        print(f"    {item['file']}: {item['reason']}")
    for warning in rep["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _train_config(args: argparse.Namespace):
    """The flags given, over ``--config FILE`` (a run's config.json or a JSON object of the settings), over the defaults."""
    names = {f.name for f in fields(TrainConfig)}
    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        raw = read_json(Path(args.config))
        from_run = isinstance(raw, dict) and isinstance(raw.get("config"), dict)  # a run's config.json
        data = raw["config"] if from_run else raw
        if not isinstance(data, dict):
            raise ConfigError(f"--config {args.config}: expected a JSON object of training settings")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"--config {args.config}: unknown setting(s) {', '.join(unknown)}")
        base = data if from_run else {"ae_loss": TrainConfig().ae_loss, **data}  # (an old run's: MSE, as it trained)
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        return TrainConfig.from_dict({**base, **given}) if base else TrainConfig(**given)
    except TypeError as exc:
        raise ConfigError(f"--config {args.config}: {exc}") from None


class _Bar:
    """A tqdm progress bar on stderr, created when the work starts (so an early error message is not mixed
    with a bar) and closed however the work ends."""

    def __init__(self, unit: str, quiet: bool) -> None:
        self.unit, self.quiet, self.bar = unit, quiet, None

    def update(self, phase: str, total: int, done: int, **postfix: Any) -> None:
        """Follow a progress report: the bar appears at ``start`` and moves at every ``epoch``."""
        if phase == "start":
            self.bar = tqdm(total=total, initial=done, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                            disable=self.quiet)
        elif phase == "epoch" and self.bar is not None:
            self.bar.update(done - self.bar.n)
            if postfix:
                self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _interruptible(work: Callable[[], T], stop: threading.Event, bar: _Bar) -> T | None:
    """Run ``work``; Ctrl-C (SIGINT) sets ``stop``: the work ends after its current step and writes what it has
    (a training: status ``stopped``, its checkpoints kept). A second Ctrl-C quits at once, except under torchrun,
    whose agent passes every SIGINT on (the ranks must leave together; it kills them itself after its grace time).
    Returns None when stopped."""
    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set() and not distributed.launched():
            raise KeyboardInterrupt
        if not stop.is_set() and distributed.is_main():
            print("\nstopping after the current step (Ctrl-C again to quit at once)", file=sys.stderr)
        stop.set()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        out = work()
        return None if stop.is_set() else out
    except KeyboardInterrupt:
        stop.set()
        print("\ninterrupted", file=sys.stderr)
        return None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        bar.close()


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _ranks(args: argparse.Namespace) -> int | None:
    """``--nproc N`` (N > 1) outside torchrun: run this same command as N processes under torchrun's elastic agent
    and return its exit code; None to run it here (one process, or one rank of a torchrun job)."""
    if args.nproc < 1:
        raise ConfigError("--nproc must be >= 1")
    if args.nproc > 1 and not distributed.launched():
        return distributed.launch(args.nproc, _without_nproc(args.argv))
    return None


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    cfg.validate()
    feature = cfg.model in FEATURE_MODELS  # one pass over the images: the bar counts backbone batches
    if feature and args.nproc > 1 and not distributed.launched():
        raise ConfigError(f"{cfg.model} is fitted in one pass over the images; train it without --nproc")
    if (code := _ranks(args)) is not None:
        return code
    rank0 = distributed.is_main()
    stop, bar = threading.Event(), _Bar("batch" if feature else "epoch", args.quiet or not rank0)

    def on_progress(p) -> None:
        if feature:
            if p.phase in ("start", "batch"):
                bar.update("start" if p.phase == "start" else "epoch", p.batches, p.batch)
            return
        losses = (dict(train=f"{p.train_loss:.4g}", val=f"{p.val_loss:.4g}", best=f"{p.best_val_loss:.4g}")
                  if p.phase == "epoch" and p.train_loss is not None else {})
        bar.update(p.phase, cfg.epochs, p.epoch, **losses)

    out: list[Path] = []  # the run folder, also when Ctrl-C stopped the training

    def work() -> Path:
        out.append(fit(cfg, Path(args.out) if args.out else None, progress=on_progress, stop=stop, resume=args.resume))
        return out[0]

    run_dir = _interruptible(work, stop, bar)
    if run_dir is None:
        if out and rank0:
            print(f"stopped: {out[0]} (status stopped, checkpoints kept; continue with --out {out[0]} --resume)")
        return 130
    if not rank0:  # rank 0 reports and evaluates; the others only scored their shares
        if not args.no_eval:
            evaluate_run(run_dir, device=cfg.device)
        return 0
    hist = read_history(run_dir)
    print(f"run: {run_dir}")
    _print_skipped(run_dir)
    if feature:
        fitted = (hist.get("epochs") or [{}])[0]
        bank = f"  bank: {fitted['bank_size']} of {fitted['patches']} patches" if "bank_size" in fitted else ""
        print(f"status: {hist.get('status')}  fitted in {_fmt(fitted.get('seconds'))} s on {fitted.get('n_train', '?')} "
              f"good images{bank}")
    else:
        print(f"status: {hist.get('status')}  best epoch: {hist.get('best_epoch')}  "
              f"best val loss: {_fmt(hist.get('best_val_loss'))}")
    if not args.no_eval:
        m = evaluate_run(run_dir, device=cfg.device)
        print(f"image AUROC: {_fmt(m['image_auroc'])}  pixel AUROC: {_fmt(m['pixel_auroc'])}  AUPRO: {_fmt(m['aupro'])}")
    return 0


def _print_skipped(run_dir: Path) -> None:
    """The training files that could not be read (kept in config.json's ``resolved``), as ``evaluate`` lists its own."""
    try:
        resolved = json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("resolved", {})
    except (OSError, ValueError):
        return
    skipped = resolved.get("skipped") or []
    if resolved.get("channels_note"):
        print(f"note: {resolved['channels_note']}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable training file(s):", file=sys.stderr)
        for item in skipped:
            path, reason = (item[0], item[1]) if isinstance(item, (list, tuple)) and len(item) >= 2 else (item, "")
            print(f"  {path}: {reason}" if reason else f"  {path}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    rule = {k: getattr(args, k, None) for k in ("rule", "target_fpr", "target_tpr", "cost_fp", "cost_fn", "cost_review")}
    settings = detectors.parse_assignments(args.settings)
    extended = (any(v is not None for v in rule.values()) or args.detector != "auto" or args.labels != "dataset"
                or bool(settings))
    if extended:  # fail fast, before scoring
        check_rule_options(**rule)
        spec = detectors.resolve(run_model(args.run_dir), args.detector)
        detectors.parse_settings(spec, settings)
    if (code := _ranks(args)) is not None:
        return code
    m = evaluate_run(args.run_dir, device=args.device, strips=not args.no_strips)
    if not distributed.is_main():  # under torchrun: this rank scored its share; rank 0 reports
        return 0
    if extended:
        m = evaluate_with_rule(args.run_dir, m, detector=args.detector, settings=settings, device=args.device,
                               labels=args.labels, **rule)
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
        for warning in m.get("data_warnings") or []:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out must name an .html file, got {out.name!r}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name ending in .html")
    res = write_report(args.run_dir, out, pdf=False, detector=args.detector, compare=args.compare,
                       labels=args.labels, device=args.device, n_boot=args.boot)
    pdf_note = None
    if args.pdf:
        try:
            write_pdf(out, out.with_suffix(".pdf"))
            res["pdf"] = str(out.with_suffix(".pdf"))
        except ConfigError as exc:
            pdf_note = str(exc)
    data = res["data"]
    if args.json:
        slim = {k: v for k, v in data.items() if k not in ("galleries", "curves")}
        g = data["galleries"]  # the images stay in the HTML; which ones they are, here
        slim["galleries"] = {"n_false_alarms": g["n_false_alarms"], "n_misses": g["n_misses"],
                             **{k: [it["path"] for it in g[k]] for k in ("false_alarms", "misses", "top_detections", "views")}}
        for c in slim["compare"]:
            c.pop("roc", None), c.pop("pr", None)
        print(json.dumps({**slim, "path": res["path"], "bytes": res["bytes"], "pdf": res["pdf"], "pdf_note": pdf_note}))
    else:
        d = data["decision"]
        print(f"report: {res['path']} ({res['bytes'] / 1e6:.1f} MB)" + (f", PDF: {res['pdf']}" if res["pdf"] else ""))
        print(f"decision: threshold {d['threshold']:.6g} ({data['decision']['rule_title']}): flags {d['tp'] + d['fp']}, "
              f"catches {d['tp']} of {d['tp'] + d['fn']}, {d['fp']} false alarm(s)")
        for w in data["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
    if pdf_note:
        print(f"no PDF: {pdf_note}", file=sys.stderr)
    return 0


def cmd_detectors(args: argparse.Namespace) -> int:
    model = run_model(args.run_dir)
    specs = detectors.supported(model)
    if args.json:
        print(json.dumps({"run_id": Path(args.run_dir).name, "model": model, "default": specs[0].name if specs else None,
                          "detectors": [s.to_dict() for s in specs]}))
        return 0
    print(f"{Path(args.run_dir).name} ({model} run): {len(specs)} detector(s); the first is the default")
    for s in specs:
        print(f"\n{s.name}: {s.title}{'' if s.has_map else ' (image scores only, no map)'}\n    {s.help}")
        for st in s.settings:
            default = "the run's" if st.default is None else st.default
            choices = f" [{', '.join(st.choices)}]" if st.choices else ""
            print(f"    --set {st.name}=...  {st.kind}{choices}, default {default}: {st.help}")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    cfg = ProjectionConfig(steps=args.steps, alpha=args.alpha, lam=args.lam, map_mode=args.map, precision=args.precision,
                           monotone=not args.no_guard)
    cfg.validate()
    if (code := _ranks(args)) is not None:
        return code
    m = evaluate_projection(args.run_dir, cfg, images=args.images, limit=args.limit, gif=args.gif,
                            batch_size=args.batch_size, device=args.device)
    if not distributed.is_main():  # this rank projected its share; rank 0 reports
        return 0
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{m['n_images']} image(s), {cfg.steps} steps, alpha {cfg.alpha}, lambda {cfg.lam}: {m['seconds']:.1f} s"
              + (f", {m['n_diverged']} diverged" if m["n_diverged"] else ""))
        if m["monotone"]:
            print(f"energy guard: alpha halved for {m['n_guarded']} image(s) ({m['alpha_halvings']} halvings), "
                  f"{m['n_stalled']} stalled, {m['energy_rises']} energy rises")
        else:
            print(f"plain update (--no-guard): {m['energy_rises']} step-to-step energy rises")
        print(f"energy: {_fmt(m['energy'][0])} -> {_fmt(m['energy'][-1])}")
        for key in ("pixel_auroc", "aupro", "image_auroc"):
            print(f"{key:>12}: projection {_fmt(m[key])}   reconstruction {_fmt(m[key + '_reconstruction'])}")
        if m.get("gif"):
            print(f"GIF ({m['gif_frames']} frames): {m['gif']}")
    return 0


def cmd_anounet(args: argparse.Namespace) -> int:
    cfg = AnoUnetConfig(beta=args.beta, epochs=args.epochs, batch=args.batch, lr=args.lr, early_stop=not args.no_early_stop,
                        guard=not args.no_guard, min_epochs=args.min_epochs, window=args.window,
                        base_channels=args.base_channels, levels=args.levels, residual=args.residual,
                        precision=args.precision, seed=args.seed)
    cfg.validate()
    if (code := _ranks(args)) is not None:
        return code
    stop, bar = threading.Event(), _Bar("img", args.quiet or not distributed.is_main())

    def on_progress(p) -> None:
        slots = p.slots if p.phase == "epoch" else None
        losses = dict(epoch=max(s.epoch for s in slots), L_R=f"{slots[0].loss_r:.4g}", L_C=f"{slots[0].loss_c:.3g}") if slots else {}
        bar.update(p.phase, p.total, p.done, **losses)

    def on_warm(p) -> None:
        if p.phase == "start" and not args.quiet:
            print(f"training the warm-start U-Net once (kept in {p.run_dir})", file=sys.stderr)

    m = _interruptible(lambda: evaluate_anounet(
        args.fnet_run, cfg, images=args.images, limit=args.limit, out=args.out, warm_start=args.warm_start,
        compare=args.compare, device=args.device, cache=not args.no_cache, progress=on_progress, stop=stop,
        warm_progress=on_warm), stop, bar)
    if m is None:
        return 130
    if not distributed.is_main():  # this rank optimized its share of the images; rank 0 wrote the maps and reports
        return 0
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
    if args.what == "app-load":
        print(json.dumps(bench_app_load(args.sessions, args.rounds, args.timeout), indent=None if args.json else 2))
        return 0
    epochs = args.epochs if args.epochs is not None else {"anounet": 30, "detectors": 0}.get(args.what, 2)
    result = bench.run(args.what, data=args.data, category=args.category, size=args.size, epochs=epochs,
                       batch_size=args.batch_size, quality_epochs=args.quality_epochs, steps=args.steps,
                       k=args.batch, fnet=args.fnet, coreset_ratio=args.coreset_ratio)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


