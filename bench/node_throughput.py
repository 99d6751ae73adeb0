"""The DICOM node (``bonefrac node``) against ``bonefrac predict`` on the same files, and its
operational guarantees under faults, with the real components of tests/node (Orthanc as the
PACS, dcmtk's storescu as the modality).

N FracAtlas radiographs (../shared/data) become 8-bit CR DICOMs, three views to a study. Then,
in this one run:

1. ``predict`` (CSV only) and ``predict --dicom-out`` (SC + SR files, the node's own work) on
   the files, with the model loaded once; then the node, in this process on the same loaded
   model: storescu of all N -> every SC, SR and study SR stored in Orthanc. Throughput in
   instances/s and the ratio node / predict.
2. Latency from C-STORE received to the image's SR stored in Orthanc (the node's audit
   times): p50/p95 within the burst, and one image at a time.
3. Memory: ``bonefrac node`` as its own process, a burst of --burst instances, its RSS sampled
   while they arrive and for --memory-window-s of processing after (peak vs after the first
   image).
4. Faults: Orthanc stopped mid-burst and started again (every result arrives, none twice);
   the node SIGKILLed mid-burst and restarted (every spooled instance gets its result); an
   unknown calling AE (rejected); a truncated dataset (failure status, node up).

    PYTHONPATH=src .venv/bin/python bench/node_throughput.py --run default --n 200 --burst 500
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchinfo  # noqa: E402  (puts the checkout on sys.path for tests.node.helpers)

from tests.node.helpers import (  # noqa: E402
    Orthanc,
    echoscu,
    free_port,
    jpg_to_cr,
    need_tools,
    storescu,
)

CALLING = "BENCH"
VIEWS_PER_STUDY = 3
QUIET_S = 3.0


def shared_data_dir() -> Path | None:
    """$BONEFRAC_DATA, else ../shared/data beside the checkout (as the tests read it; not
    imported from tests.conftest, which pins torch to one thread)."""
    import os

    env = os.environ.get("BONEFRAC_DATA")
    for path in [Path(env)] if env else [benchinfo.REPO.parent / "shared" / "data"]:
        if (path / "fracatlas" / "dataset.csv").is_file():
            return path
    return None


def convert(n: int, folder: Path, seed: int = 0) -> list[Path]:
    """``n`` FracAtlas JPGs (a fixed random sample) as CR files, VIEWS_PER_STUDY per study."""
    from pydicom.uid import generate_uid

    data = shared_data_dir()
    if data is None:
        raise SystemExit("needs ../shared/data/fracatlas (or $BONEFRAC_DATA)")
    jpgs = sorted((data / "fracatlas" / "images").glob("*/*.jpg"))
    random.Random(seed).shuffle(jpgs)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    study = ""
    for jpg in jpgs:
        if len(out) == n:
            break
        if len(out) % VIEWS_PER_STUDY == 0:
            study = generate_uid()
        try:
            out.append(jpg_to_cr(jpg, folder / f"{len(out):04d}-{jpg.stem}.dcm", study))
        except OSError as exc:  # a truncated JPG (the manifest quarantines those too)
            print(f"skipped {jpg.name}: {exc}")
    return out


def queued(records: list[dict[str, Any]]) -> int:
    """Results the node queued: each prediction's (SC + SR, an SR alone for an input out of
    scope) and the study reports."""
    per_image = sum(len((r.get("result_uid") or "").split(",")) for r in records
                    if r["event"] == "predicted" and r.get("result_uid"))  # fmt: skip
    return per_image + sum(r["event"] == "study_report" for r in records)


def drained(spool: Path, timeout: float) -> None:
    """Wait until nothing waits in the spool (incoming, outboxes)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and (
        list((spool / "incoming").glob("*.dcm")) or list((spool / "outbox").rglob("*.dcm"))
    ):
        time.sleep(0.5)


def audit(spool: Path) -> list[dict[str, Any]]:
    path = spool / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def latencies(records: list[dict[str, Any]]) -> list[float]:
    """Seconds from an instance's ``received`` to its SR's ``sent`` (stored by the PACS)."""
    received = {r["sop_instance_uid"]: parse_time(r["time"]) for r in records
                if r["event"] == "received"}  # fmt: skip
    sent = {r["result_uid"]: parse_time(r["time"]) for r in records if r["event"] == "sent"}
    out = []
    for r in records:
        if r["event"] == "predicted" and r.get("result_uid"):
            sr_uid = r["result_uid"].split(",")[-1]  # capture first, report last
            if sr_uid in sent and r["sop_instance_uid"] in received:
                out.append(sent[sr_uid] - received[r["sop_instance_uid"]])
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def throughput(run: str, files: list[Path], tmp: Path) -> dict[str, Any]:
    from bonefrac.batch_predict.job import predict_to_csv
    from bonefrac.config import NodeConfig, PredictConfig
    from bonefrac.inference.predictor import Predictor
    from bonefrac.node.service import Node
    from bonefrac.rundir import RunDir

    run_dir = RunDir.open(run)
    predictor = Predictor.from_run(run_dir)
    n = len(files)
    res: dict[str, Any] = {"n": n}
    # warm-up (first-call costs: imports, allocator, fonts) so no arm pays them
    warm = PredictConfig(progress=False, workers=0, dicom_out=tmp / "warm")
    predict_to_csv(run_dir.path, files[:3], tmp / "warm.csv", warm, predictor=predictor)
    for label, dicom_out in (("predict", None), ("predict_dicom_out", tmp / "dicom-out")):
        cfg = PredictConfig(progress=False, workers=0, dicom_out=dicom_out)
        start = time.perf_counter()
        predict_to_csv(run_dir.path, files, tmp / f"{label}.csv", cfg, predictor=predictor)
        res[f"{label}_ips"] = n / (time.perf_counter() - start)
        print(f"{label}: {res[f'{label}_ips']:.3f} instances/s", flush=True)

    with Orthanc(tmp / "orthanc-tp") as pacs:
        port = free_port()
        node = Node(
            NodeConfig(run=str(run_dir.path), port=port, allow=[CALLING],
                       send_to=[pacs.destination], spool=tmp / "spool-tp", study_quiet_s=QUIET_S),
            predictor=predictor,
        )  # fmt: skip
        node.start()
        start = time.time()
        sent = storescu(port, files, CALLING)
        accepted = time.time() - start
        assert sent.returncode == 0, sent.stderr[-2000:]
        node.wait_idle(4 * 3600)
        records = node.spool.audit.records()
        expected = queued(records)  # SC + SR per image (an SR alone out of scope) + studies
        found = pacs.wait_for(expected, 60)
        assert len(found) == expected, f"{len(found)} of {expected} results"
        # the images' own results are the throughput (a study report waits QUIET_S after its
        # study's last image by design)
        image_results = {u for r in records if r["event"] == "predicted"
                         for u in (r.get("result_uid") or "").split(",") if u}  # fmt: skip
        elapsed = max(parse_time(r["time"]) for r in records
                      if r["event"] == "sent" and r["result_uid"] in image_results) - start  # fmt: skip
        burst = latencies(records)
        # one at a time: the latency a single radiograph sees on an idle node
        single_files = files[:10]
        single_uids = []
        for path in single_files:
            before = len(node.spool.audit.records())
            storescu(port, [path], CALLING)
            node.wait_idle(120)
            single_uids.append(node.spool.audit.records()[before:])
        node.stop()
    single = [lat for recs in single_uids for lat in latencies(recs)]
    res.update(
        node_ips=n / elapsed, node_accept_s=accepted, node_elapsed_s=elapsed,
        latency_burst_p50=pct(burst, 0.5), latency_burst_p95=pct(burst, 0.95),
        latency_single_p50=pct(single, 0.5), latency_single_p95=pct(single, 0.95),
        results=expected,
    )  # fmt: skip
    res["ratio_node_vs_predict"] = res["node_ips"] / res["predict_ips"]
    res["ratio_node_vs_predict_dicom_out"] = res["node_ips"] / res["predict_dicom_out_ips"]
    return res


def start_node(run: str, port: int, pacs: Orthanc, spool: Path, log: Path, *extra: str) -> Any:
    from tests.cli_subprocess import bonefrac_command, cli_env

    command = [*bonefrac_command(), "node", run, "--port", str(port), "--allow", CALLING,
               "--send-to", pacs.destination, "--spool", str(spool), *extra]  # fmt: skip
    env = cli_env()
    env.pop("OMP_NUM_THREADS", None)  # the node as deployed: torch's own thread count
    with open(log, "ab") as fh:
        proc = subprocess.Popen(command, env=env, stdout=fh, stderr=fh)
    deadline = time.monotonic() + 300
    while echoscu(port, CALLING).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.3)
    return proc


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(run: str, files: list[Path], tmp: Path, window_s: float) -> dict[str, Any]:
    port, spool = free_port(), tmp / "spool-mem"
    with Orthanc(tmp / "orthanc-mem") as pacs:
        proc = start_node(run, port, pacs, spool, tmp / "node-mem.log", "--set",
                          "study_quiet_s=null")  # fmt: skip
        storescu(port, files[:1], CALLING)
        pacs.wait_for(2, 300)
        after_one = rss_mib(proc.pid)
        peak, arrived_s = after_one, float("nan")
        sender = threading.Thread(target=storescu, args=(port, files, CALLING))
        start = time.monotonic()
        sender.start()
        while sender.is_alive() or time.monotonic() - start < window_s:
            peak = max(peak, rss_mib(proc.pid))
            time.sleep(0.2)
            if not sender.is_alive() and arrived_s != arrived_s:  # NaN: not yet
                arrived_s = time.monotonic() - start
        sender.join()
        done = sum(r["event"] == "predicted" for r in audit(spool)) - 1
        waiting = len(list((spool / "incoming").glob("*.dcm")))
        proc.terminate()
        proc.wait(120)
    return {
        "burst": len(files), "rss_after_one_mib": after_one, "rss_peak_mib": peak,
        "burst_arrived_s": arrived_s, "window_s": window_s,
        "predicted_in_window": done, "still_spooled": waiting,
    }  # fmt: skip


def faults(run: str, files: list[Path], tmp: Path) -> dict[str, Any]:
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    out: dict[str, Any] = {"n": len(files)}
    n = len(files)
    # (a) the PACS stopped mid-burst and started again
    port = free_port()
    with Orthanc(tmp / "orthanc-outage") as pacs:
        proc = start_node(run, port, pacs, tmp / "spool-outage", tmp / "node-outage.log",
                          "--set", "study_quiet_s=null", "--set", "retry_max_backoff_s=5")  # fmt: skip
        sender = threading.Thread(target=storescu, args=(port, files, CALLING))
        sender.start()
        pacs.wait_for(n // 2, 3600)  # a quarter of the results are in
        pacs.stop()
        down_at = time.monotonic()
        time.sleep(20)
        down_s = time.monotonic() - down_at
        pacs.start()
        sender.join()
        drained(tmp / "spool-outage", 3600)
        expected = queued(audit(tmp / "spool-outage"))
        found = pacs.wait_for(expected, 60)
        stored = pacs.datasets()
        uids = [str(ds.SOPInstanceUID) for ds in stored]
        sources = [str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in stored
                   if ds.SOPClassUID.name == "Secondary Capture Image Storage"]  # fmt: skip
        out["outage"] = {
            "down_s": down_s, "results": len(found), "expected": expected,
            "unique": len(set(uids)), "captures_per_source_max": max(
                sources.count(s) for s in set(sources)) if sources else 0,
            "dead_letters": len(list((tmp / "spool-outage" / "dead").rglob("*.dcm"))),
        }  # fmt: skip
        proc.terminate()
        proc.wait(120)
    # (b) the node SIGKILLed mid-burst and started again on its spool
    port, spool = free_port(), tmp / "spool-kill"
    with Orthanc(tmp / "orthanc-kill") as pacs:
        proc = start_node(run, port, pacs, spool, tmp / "node-kill.log",
                          "--set", "study_quiet_s=null")  # fmt: skip
        storescu(port, files, CALLING)
        proc.kill()
        proc.wait(60)
        spooled = len(list((spool / "incoming").glob("*.dcm")))
        proc = start_node(run, port, pacs, spool, tmp / "node-kill.log",
                          "--set", "study_quiet_s=null")  # fmt: skip
        drained(spool, 3600)
        expected = queued(audit(spool))
        found = pacs.wait_for(expected, 60)
        uids = [str(ds.SOPInstanceUID) for ds in pacs.datasets()]
        # (c) an unknown calling AE, (d) a truncated dataset, on the same node
        rejected = echoscu(port, "INTRUDER").returncode != 0
        data = files[0].read_bytes()
        truncated = tmp / "truncated.dcm"
        truncated.write_bytes(data[: len(data) * 2 // 3])
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="BONEFRAC")
        _config.STORE_SEND_CHUNKED_DATASET = True
        status = assoc.send_c_store(truncated).Status
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
        up = echoscu(port, CALLING).returncode == 0
        proc.terminate()
        proc.wait(120)
    out["kill"] = {"spooled_at_kill": spooled, "results": len(found), "expected": expected,
                   "unique": len(set(uids))}  # fmt: skip
    out["unknown_ae_rejected"] = rejected
    out["truncated_status"] = f"0x{status:04X}"
    out["node_up_after_truncated"] = up
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="default", help="Run directory or shipped name.")
    parser.add_argument("--n", type=int, default=200, help="Instances for the throughput.")
    parser.add_argument("--burst", type=int, default=500, help="Instances of the memory burst.")
    parser.add_argument("--memory-window-s", type=float, default=90.0)
    parser.add_argument("--faults-n", type=int, default=24, help="Instances per fault case.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures (JSON).")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "faults"])
    args = parser.parse_args()
    need_tools("Orthanc", "storescu", "echoscu")
    print(f"commit {benchinfo.git_commit()}; {benchinfo.machine()}; run {args.run}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bonefrac-node-bench-"))
    files = convert(max(args.n, args.burst, args.faults_n), tmp / "cr")
    report: dict[str, Any] = {"commit": benchinfo.git_commit(), "machine": benchinfo.machine()}
    if "throughput" not in args.skip:
        tp = throughput(args.run, files[: args.n], tmp)
        report["throughput"] = tp
        print(
            f"node {tp['node_ips']:.3f} instances/s (storescu of {tp['n']} CR -> {tp['results']} "
            f"results in Orthanc in {tp['node_elapsed_s']:.1f} s; all accepted after "
            f"{tp['node_accept_s']:.1f} s) vs predict {tp['predict_ips']:.3f} /s: ratio "
            f"{tp['ratio_node_vs_predict']:.2f}; vs predict --dicom-out "
            f"{tp['predict_dicom_out_ips']:.3f} /s: ratio {tp['ratio_node_vs_predict_dicom_out']:.2f}"
        )
        print(
            f"latency C-STORE -> SR stored: burst p50 {tp['latency_burst_p50']:.1f} s, p95 "
            f"{tp['latency_burst_p95']:.1f} s; one at a time p50 {tp['latency_single_p50']:.2f} s,"
            f" p95 {tp['latency_single_p95']:.2f} s", flush=True,
        )  # fmt: skip
    if "memory" not in args.skip:
        mem = memory(args.run, files[: args.burst], tmp, args.memory_window_s)
        report["memory"] = mem
        print(
            f"memory: burst of {mem['burst']} arrived in {mem['burst_arrived_s']:.1f} s; RSS after "
            f"one image {mem['rss_after_one_mib']:.0f} MiB, peak {mem['rss_peak_mib']:.0f} MiB "
            f"(ratio {mem['rss_peak_mib'] / mem['rss_after_one_mib']:.2f}); "
            f"{mem['predicted_in_window']} predicted in the window, {mem['still_spooled']} "
            "still spooled", flush=True,
        )  # fmt: skip
    if "faults" not in args.skip:
        fl = faults(args.run, files[: args.faults_n], tmp)
        report["faults"] = fl
        print(f"faults ({fl['n']} instances each): {json.dumps(fl)}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"(files under {tmp})")


if __name__ == "__main__":
    main()
