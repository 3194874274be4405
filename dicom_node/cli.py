"""``dicom-node`` command line: serve, echo, send, jobs, status, process, simulate."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from dicom_node import __version__
from dicom_node.config import ConfigError, check_ae_title, load_config
from dicom_node.status import SUCCESS

_ADDR_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def parse_address(text: str) -> tuple[str, str, int]:
    """'AE@HOST:PORT' -> (ae, host, port)."""
    m = _ADDR_RE.match(text)
    if not m or not 1 <= int(m["port"]) <= 65535:
        raise argparse.ArgumentTypeError(f"expected AE@HOST:PORT, got {text!r}")
    try:
        ae = check_ae_title(m["ae"], "AE title")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return ae, m["host"], int(m["port"])


def _cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.logs import setup_logging  # noqa: PLC0415
    from dicom_node.node import Node  # noqa: PLC0415

    config = load_config(args.config)
    setup_logging(config.storage_dir / "log", logging.DEBUG if args.verbose else logging.INFO)
    try:
        node = Node(config)
    except OSError as exc:
        print(f"dicom-node: cannot open storage {config.storage_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        node.serve_forever()
    except OSError as exc:  # e.g. port in use
        print(f"dicom-node: cannot listen on {config.node.host}:{config.node.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from dicom_node.send import echo  # noqa: PLC0415

    ae, host, port = args.address
    status = echo(ae, host, port, calling_ae=args.aet, timeout_s=args.timeout)
    if status == SUCCESS:
        print(f"C-ECHO {ae}@{host}:{port}: success")
        return 0
    print(f"C-ECHO {ae}@{host}:{port}: " + ("no association" if status < 0 else f"status 0x{status:04X}"),
          file=sys.stderr)
    return 1


def _dicom_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(p)
    return files


def _cmd_send(args: argparse.Namespace) -> int:
    from pydicom.filereader import read_file_meta_info  # noqa: PLC0415

    from dicom_node.config import SendSection  # noqa: PLC0415
    from dicom_node.send import OutgoingInstance, StorageSender  # noqa: PLC0415

    ae, host, port = args.to
    outgoing, skipped = [], 0
    try:
        files = _dicom_files(args.paths)
    except FileNotFoundError as exc:
        print(f"dicom-node send: no such file or directory: {exc}", file=sys.stderr)
        return 2
    for f in files:
        try:
            meta = read_file_meta_info(f)
            outgoing.append(OutgoingInstance(f, str(meta.MediaStorageSOPClassUID),
                                             str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)))
        except Exception:
            skipped += 1
    if not outgoing:
        print("dicom-node send: no DICOM files (Part 10 with file meta) found", file=sys.stderr)
        return 2
    sender = StorageSender(args.aet, SendSection(dimse_timeout_s=args.timeout, acse_timeout_s=args.timeout))
    t0 = time.monotonic()
    report = sender.send(ae, host, port, outgoing)
    dt = time.monotonic() - t0
    print(f"sent {len(report.acknowledged)}/{len(outgoing)} instances to {ae}@{host}:{port} in {dt:.2f} s"
          + (f" ({skipped} non-DICOM files skipped)" if skipped else ""))
    for sop, status in report.failed.items():
        print(f"  refused 0x{status:04X}: {sop}", file=sys.stderr)
    for sop in report.unacknowledged:
        print(f"  no response: {sop}", file=sys.stderr)
    return 0 if report.complete else 1


def _format_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _cmd_jobs(args: argparse.Namespace) -> int:
    from dicom_node.index import index_path, open_index  # noqa: PLC0415

    config = load_config(args.config)
    if not config.index.url and not index_path(config.storage_dir).exists():
        print(f"no index at {index_path(config.storage_dir)}: no jobs yet")
        return 0
    index = open_index(config.storage_dir, config.node.index_synchronous, config.index.url)
    try:
        if args.retry is not None:
            if index.requeue_job(args.retry):
                print(f"job {args.retry} re-queued")
                return 0
            job = index.get_job(args.retry)
            print(f"job {args.retry} " + ("not found" if job is None else f"is {job.state}; only failed or done "
                                          "jobs can be re-queued"), file=sys.stderr)
            return 1
        jobs = index.jobs([args.state] if args.state else None)
        print(f"{'ID':>5}  {'STATE':8} {'ATT':>5}  {'KIND':10} {'UPDATED':19}  SERIES / LAST ERROR OR RESULT")
        for j in jobs:
            note = j.last_error if j.state in ("failed", "pending") and j.last_error else (j.result or "")
            print(f"{j.id:>5}  {j.state:8} {j.attempts:>2}/{j.max_attempts:<2}  {j.kind:10} "
                  f"{_format_time(j.updated_at)}  {j.series_uid}")
            if note:
                print(f"{'':>7}{note}")
        return 0
    finally:
        index.close()


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    return values


def _process_config(args: argparse.Namespace):
    """The node's configuration (``--config``), with the command line's ``[engine]`` overrides."""
    engine = {key: value for key, value in (("t2_method", args.method), ("confidence", args.confidence),
                                            ("prebolus_dose_ratio", args.prebolus_dose_ratio))
              if value is not None}
    return load_config(args.config, {"engine": engine} if engine else None)


def _cmd_process(args: argparse.Namespace) -> int:
    from dicom_node.processing import (  # noqa: PLC0415
        PIPELINES,
        FolderDelivery,
        FolderSeries,
        Processor,
        SeriesError,
        SeriesKind,
    )

    t0 = time.monotonic()
    steps = ["read", "classify", "load_model"]

    def progress(name: str) -> None:
        k = steps.index(name) + 1 if name in steps else 0
        bar = "#" * k + "." * (len(steps) - k)
        print(f"\r[{bar}] {k}/{len(steps)} {name:<18} {time.monotonic() - t0:6.1f} s", end="", file=sys.stderr,
              flush=True)

    config = _process_config(args)
    progress("read")
    if not Path(args.dir).is_dir():
        print(f"dicom-node process: no such folder: {args.dir}", file=sys.stderr)
        return 2
    folder = FolderSeries.scan(Path(args.dir))
    progress("classify")
    processor = Processor(config)
    kinds = {uid: processor.classify(folder.series_headers(uid)) for uid in folder.series_uids}
    # the folder may hold a whole study: the series processed are the quantified kinds' (T2 series
    # of one study make its stack(s), a perfusion series takes its pre-bolus along); the rest is listed
    main_uids = [uid for uid, k in kinds.items() if k.kind in PIPELINES]
    for uid, k in kinds.items():
        if uid not in main_uids and k.kind != SeriesKind.PREBOLUS:
            print(f"\n  not processed: series {uid} is '{k.kind}' ({k.reason})", end="", file=sys.stderr)
    if not main_uids:
        print(f"\ndicom-node process: no series to process; {' and '.join(str(k) for k in PIPELINES)} series "
              "are processed", file=sys.stderr)
        return 1
    if len({kinds[uid].kind for uid in main_uids}) > 1 or (kinds[main_uids[0]].kind != SeriesKind.T2
                                                           and len(main_uids) > 1):
        print(f"\ndicom-node process: the folder holds {len(main_uids)} series to process of "
              f"{len({kinds[uid].kind for uid in main_uids})} kinds; give it one perfusion series (with its "
              "pre-bolus series) or the T2 series of one study", file=sys.stderr)
        return 1
    uid = main_uids[0]
    kind = kinds[uid]
    steps += [*PIPELINES[kind.kind].steps, "write"]
    out = Path(args.out)
    subjects: list[str] = []

    def delivery_for(subject: str) -> FolderDelivery:
        """The first stack (or series) into ``out``, any further one into ``out/<its UID>``."""
        subjects.append(subject)
        return FolderDelivery(out if len(subjects) == 1 else out / subject)

    processor.start()  # the helpers warm up while the series loads and the engine runs
    try:
        processor.process(kind.kind, uid, folder, delivery_for, progress)
    except SeriesError as exc:
        print(f"\ndicom-node process: cannot process this series: {exc}", file=sys.stderr)
        return 1
    finally:
        processor.stop()
    progress("write")
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nwrote {len(summary['derived'])} derived objects, summary.json and pictures to {out} "
          f"in {time.monotonic() - t0:.1f} s" + (f" (and {len(subjects) - 1} further stack(s) in sub-folders)"
                                                if len(subjects) > 1 else ""), file=sys.stderr)
    g = summary["global"]
    if kind.kind == SeriesKind.T2:
        print(f"LV myocardium T2 {g['t2_ms']:.1f} ± {g['t2_bound_ms']:.2f} ms (SD {g['t2_sd_ms']:.1f}, "
              f"{g['n_pixels']} px); {len(summary['segments'])} AHA segments")
    else:
        print(f"LV myocardium MBF {g['mbf_ml_min_g']:.2f} ml/min/g (SD {g['mbf_sd_ml_min_g']:.2f}, "
              f"{g['n_pixels']} px); "
              + ", ".join(f"{e['aha']}: {e['mbf_ml_min_g']:.2f}" for e in summary["segments"]))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from dicom_node.simulate import simulate_t2  # noqa: PLC0415

    out = Path(args.out)
    if args.vendor:
        from dicom_node.vendors import simulate_vendor_t2  # noqa: PLC0415

        _, written = simulate_vendor_t2(out, args.vendor, seed=args.seed, snr=args.snr, te_ms=args.te,
                                        slices=args.slices, matrix=args.matrix, blood=args.blood,
                                        oedema=not args.no_oedema)
        print(f"wrote a {args.vendor} study of {sum(len(v) for v in written.values())} MR instances in "
              f"{len(written)} series ({args.matrix}x{args.matrix}, SNR {args.snr:g}) and truth.npz to {out}:")
        for folder, paths in written.items():
            print(f"  {folder}/: {len(paths)} instances")
        return 0
    phantom = simulate_t2(out, seed=args.seed, snr=args.snr, te_ms=args.te, slices=args.slices, matrix=args.matrix,
                          blood=args.blood, oedema=not args.no_oedema)
    n = phantom.images.shape[0] * phantom.images.shape[1]
    print(f"wrote {n} MR instances ({phantom.images.shape[0]} slices x {phantom.images.shape[1]} preparation times "
          f"{', '.join(f'{t:g}' for t in phantom.te_ms)} ms, {args.matrix}x{args.matrix}, SNR {args.snr:g}) "
          f"and truth.npz to {out}")
    return 0


def _cmd_simulate_perfusion(args: argparse.Namespace) -> int:
    from dicom_node.simulate import simulate_perfusion  # noqa: PLC0415

    out = Path(args.out)
    phantom = simulate_perfusion(out, seed=args.seed, snr=args.snr, slices=args.slices, frames=args.frames,
                                 matrix=args.matrix, ischaemia=not args.no_ischaemia, r2star=args.r2star,
                                 prebolus=args.prebolus)
    s, f = phantom.images.shape[:2]
    print(f"wrote {s * f} MR instances ({s} slices x {f} dynamics, {args.matrix}x{args.matrix}, SNR {args.snr:g}, "
          f"{'an ischaemic sector at 40 % flow' if not args.no_ischaemia else 'no ischaemia'}) and truth.npz to {out}")
    if args.prebolus:
        print(f"wrote the pre-bolus series (a tenth of the dose, 40 dynamics) to {out / 'prebolus'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from dicom_node.health import snapshot  # noqa: PLC0415
    from dicom_node.send import echo  # noqa: PLC0415

    config = load_config(args.config)
    status = snapshot(config)
    host = "127.0.0.1" if config.node.host in ("0.0.0.0", "") else config.node.host
    answer = echo(config.node.ae_title, host, config.node.port, calling_ae="STATUS", timeout_s=5)
    status["responding"] = answer == SUCCESS
    print(json.dumps(status, indent=2))
    return 0 if status["responding"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicom-node", description="DICOM node for cardiac MR quantification")
    p.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the node (embedded default without --config)")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    s.set_defaults(func=_cmd_serve)

    e = sub.add_parser("echo", help="C-ECHO a peer")
    e.add_argument("address", type=parse_address, metavar="AE@HOST:PORT")
    e.add_argument("--aet", default="PINN_NODE", help="calling AE title (default PINN_NODE)")
    e.add_argument("--timeout", type=float, default=15.0)
    e.set_defaults(func=_cmd_echo)

    c = sub.add_parser("send", help="C-STORE files or folders to a peer")
    c.add_argument("--to", type=parse_address, required=True, metavar="AE@HOST:PORT")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--aet", default="PINN_NODE", help="calling AE title (default PINN_NODE)")
    c.add_argument("--timeout", type=float, default=15.0)
    c.set_defaults(func=_cmd_send)

    sim = sub.add_parser("simulate", help="write a synthetic series of the numerical phantom plus truth.npz")
    sim_sub = sim.add_subparsers(dest="kind", required=True)
    t2 = sim_sub.add_parser("t2", help="T2-prepared multi-echo short-axis series")
    t2.add_argument("--out", required=True, help="output folder")
    t2.add_argument("--seed", type=int, default=0)
    t2.add_argument("--snr", type=float, default=40.0, help="myocardial M0 / noise SD (default 40)")
    t2.add_argument("--te", type=_floats, default=(0.0, 35.0, 55.0), help="preparation times in ms (default 0,35,55)")
    t2.add_argument("--slices", type=int, default=3)
    t2.add_argument("--matrix", type=int, default=192)
    t2.add_argument("--blood", choices=["bright", "black"], default="bright")
    t2.add_argument("--no-oedema", action="store_true", help="no oedema sector (T2 60 ms) in the myocardium")
    t2.add_argument("--vendor", choices=["siemens", "siemens-xa", "philips", "ge"],  # dicom_node.vendors.VENDORS
                    help="write a study as the vendor does: siemens (MyoMaps: a series per slice, the preparation "
                         "time in Image Comments, MOCO series, the scanner's T2 map and a MOLLI series), siemens-xa "
                         "(the same with each source series one Enhanced MR image), philips (the multi-echo series "
                         "as one Enhanced MR image, frames scaled, and the scanner's T2 map), ge (one series, echo "
                         "fastest, EchoTime = preparation time); default: the node's own phantom series")
    t2.set_defaults(func=_cmd_simulate)
    pf = sim_sub.add_parser("perfusion", help="first-pass perfusion series (saturation recovery, 2CXM myocardium)")
    pf.add_argument("--out", required=True, help="output folder")
    pf.add_argument("--seed", type=int, default=0)
    pf.add_argument("--snr", type=float, default=40.0, help="pre-contrast myocardial signal / noise SD")
    pf.add_argument("--slices", type=int, default=3)
    pf.add_argument("--frames", type=int, default=60, help="dynamics, one per second")
    pf.add_argument("--matrix", type=int, default=128)
    pf.add_argument("--no-ischaemia", action="store_true", help="no low-flow sector")
    pf.add_argument("--r2star", type=float, default=0.0,
                    help="T2* relaxivity (1/s/mM) of the blood signal: >0 flattens the full-dose arterial input")
    pf.add_argument("--prebolus", action="store_true",
                    help="also write a pre-bolus series (a tenth of the dose) of the same study to OUT/prebolus")
    pf.set_defaults(func=_cmd_simulate_perfusion)

    pr = sub.add_parser("process", help="run the node's processing offline on a folder holding one series")
    pr.add_argument("dir", help="folder with the DICOM instances of one series (and, for perfusion, its pre-bolus)")
    pr.add_argument("--out", required=True, help="output folder: derived objects, summary.json, pictures")
    pr.add_argument("--config", help="the node's TOML configuration ([engine], [[classify]]); default: built-in")
    pr.add_argument("--method", choices=["pinn", "nlls"], help="overrides [engine] t2_method")
    pr.add_argument("--confidence", type=float, help="overrides [engine] confidence")
    pr.add_argument("--prebolus-dose-ratio", type=float,
                    help="overrides [engine] prebolus_dose_ratio: main / pre-bolus dose, for a pre-bolus series "
                         "whose headers do not state its dose")
    pr.set_defaults(func=_cmd_process)

    st = sub.add_parser("status", help="health: responding, queue depth, failed jobs, disk space, last success")
    st.add_argument("--config", help="TOML configuration file")
    st.set_defaults(func=_cmd_status)

    j = sub.add_parser("jobs", help="list jobs, or re-queue one")
    j.add_argument("--config", help="TOML configuration file (for the storage location)")
    j.add_argument("--state", choices=["pending", "running", "done", "failed"])
    j.add_argument("--retry", type=int, metavar="ID", help="re-queue a failed job")
    j.set_defaults(func=_cmd_jobs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicom-node: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
