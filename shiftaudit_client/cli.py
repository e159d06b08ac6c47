"""`shiftaudit submit`, `shiftaudit report` and `shiftaudit compare`: the API from a CI job.

The service's address and key come from SHIFTAUDIT_URL and SHIFTAUDIT_API_KEY (a key on
the command line would show in process lists and CI logs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import TypeVar

from shiftaudit.archives import pack_directory
from shiftaudit.config_args import add_config_arguments, config_from_args
from shiftaudit.errors import ShiftAuditError
from shiftaudit.files import sha256_file
from shiftaudit.terminal import ProgressBar, format_summary
from shiftaudit_api.audits import AuditEstimate, AuditOut
from shiftaudit_api.common import Page
from shiftaudit_api.uploads import StoredFileOut
from shiftaudit_client import api
from shiftaudit_client.api import Call
from shiftaudit_client.http import ApiError, Client, ServiceUnavailable, WaitTimeout

DEFAULT_URL = "http://127.0.0.1:8000"
FoundT = TypeVar("FoundT", bound=StoredFileOut)
StoredT = TypeVar("StoredT", bound=StoredFileOut)


class Exit(IntEnum):
    """Exit statuses a CI job can tell apart."""

    OK = 0  # queued; or, with --wait, succeeded and every policy passed
    POLICY_FAILED = 1
    BAD_INPUT = 2  # a local file or the request was refused (4xx)
    AUDIT_FAILED = 3  # the audit itself failed or was cancelled
    TIMED_OUT = 4  # --timeout passed before the audit finished; it keeps running
    UNAVAILABLE = 5  # the service could not be reached or kept answering 5xx/429


def configure_submit(submit: argparse.ArgumentParser) -> None:
    """`submit MODEL PROBES`: upload what the service lacks, audit, optionally wait and gate."""
    submit.add_argument("model", type=Path, help="ONNX, TorchScript or torch.export file")
    submit.add_argument("probes", type=Path, help="directory, .zip or .tar(.gz) of images")
    submit.add_argument("--name", help="model name (default: the file's stem)")
    submit.add_argument("--version", default="1", help="model version (default: 1)")
    submit.add_argument(
        "--policy",
        action="append",
        default=[],
        help="a policy of your team to gate on (repeatable)",
    )
    add_config_arguments(submit)
    submit.add_argument("--gpu-type", metavar="T", help="run on workers for this GPU type")
    submit.add_argument(
        "--estimate",
        action="store_true",
        help="only print what the audit would cost and whether it is allowed (nothing queued; "
        "exit 2 when it would be refused)",
    )
    submit.add_argument("--wait", action="store_true", help="follow the audit to its end")
    submit.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S s")
    submit.add_argument("--quiet", action="store_true", help="no progress bars")
    submit.set_defaults(handler=_guarded(_submit))


def configure_report(report: argparse.ArgumentParser) -> None:
    """`report AUDIT`: a stored report as a summary, JSON or one self-contained HTML file."""
    report.add_argument("audit_id", type=uuid.UUID)
    report.add_argument(
        "--format",
        choices=["summary", "json", "html"],
        default="summary",
        help="html: one self-contained file for a pull request or a ticket",
    )
    report.add_argument("--out", type=Path, help="write it to a file instead of stdout")
    report.set_defaults(handler=_guarded(_report))


def configure_compare(compare: argparse.ArgumentParser) -> None:
    """`compare BASELINE CANDIDATE...`: deltas with intervals and significance."""
    compare.add_argument("audit_ids", type=uuid.UUID, nargs="+", metavar="AUDIT")
    compare.set_defaults(handler=_guarded(_compare))


def _guarded(handler: Callable[[argparse.Namespace], Exit]) -> Callable[[argparse.Namespace], int]:
    """Map the client's errors onto exit statuses with a one-line message."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except ServiceUnavailable as error:
            return _fail(Exit.UNAVAILABLE, str(error))
        except ApiError as error:
            status = Exit.UNAVAILABLE if error.status >= 500 else Exit.BAD_INPUT
            return _fail(status, str(error))
        except WaitTimeout as error:
            return _fail(Exit.TIMED_OUT, str(error))
        except ShiftAuditError as error:
            return _fail(Exit.BAD_INPUT, str(error))

    return run


def _fail(status: Exit, message: str) -> int:
    print(f"shiftaudit: error: {message}", file=sys.stderr)
    return int(status)


def _client() -> tuple[Client, str]:
    url = os.environ.get("SHIFTAUDIT_URL", DEFAULT_URL).rstrip("/")
    key = os.environ.get("SHIFTAUDIT_API_KEY")
    if not key:
        raise ShiftAuditError("set SHIFTAUDIT_API_KEY to an API key of your team")
    return Client(url, key), url


def _submit(args: argparse.Namespace) -> Exit:
    config = config_from_args(args)
    for path in (args.model, args.probes):
        if not path.exists():
            raise ShiftAuditError(f"no such file or directory: {path}")
    client, url = _client()
    with client:
        model_id, probe_set_id = _upload_missing(client, args)
        request = {
            "model_id": model_id,
            "probe_set_id": probe_set_id,
            "config": config,
            "policies": args.policy,
            "gpu_type": args.gpu_type,
        }
        if args.estimate:
            return _print_estimate(client.send(api.estimate_audit(**request)))
        audit = client.send(api.create_audit(**request))
        print(f"audit {audit.id} {'reused' if audit.reused else audit.status}", file=sys.stderr)
        print(f"{url}/v1/audits/{audit.id}")
        if not args.wait:
            return Exit.OK
        bar = None if args.quiet else ProgressBar(sys.stderr)

        def follow(update: AuditOut) -> None:
            if bar is not None:
                bar(update.progress, update.status)

        audit = client.wait(audit.id, timeout=args.timeout, on_update=follow)
        if bar is not None:
            bar.close()
        if audit.status != "succeeded":
            return Exit(_fail(Exit.AUDIT_FAILED, f"the audit {audit.status}: {audit.error}"))
        print(format_summary(client.send(api.get_report(audit.id))))
    print(f"report: {url}/ui/audits/{audit.id} (JSON: {url}/v1/audits/{audit.id}/report)")
    return _verdict(audit)


def _print_estimate(estimate: AuditEstimate) -> Exit:
    """The estimate as a CI log shows it; exit 2 when the audit would be refused."""
    print(
        f"estimate: {estimate.forward_passes} forward passes ({estimate.sweep_forward_passes} "
        f"for the sweep: {estimate.probes} probes x {estimate.evaluations_per_probe}, "
        f"{estimate.layer_forward_passes} for the layer profile) in {estimate.shards} shard(s); "
        f"limit {estimate.max_forward_passes_per_audit}"
    )
    if estimate.allowed:
        print("allowed")
        return Exit.OK
    return Exit(_fail(Exit.BAD_INPUT, f"the audit would be refused: {estimate.reason}"))


def _upload_missing(client: Client, args: argparse.Namespace) -> tuple[uuid.UUID, uuid.UUID]:
    """Upload what the server lacks: the model's and the probe set's ids."""
    with tempfile.TemporaryDirectory(prefix="shiftaudit-submit-") as scratch:
        probes = args.probes
        if probes.is_dir():
            probes = pack_directory(probes, Path(scratch) / "probes.tar")
        name = args.name or args.model.stem
        model_id = _on_server(
            client,
            api.list_models(sha256=sha256_file(args.model), limit=1),
            api.upload_model(args.model, name=name, version=args.version),
            kind="model",
            detail=lambda model: model.format,
            quiet=args.quiet,
        )
        probe_set_id = _on_server(
            client,
            api.list_probe_sets(sha256=sha256_file(probes), limit=1),
            api.upload_probe_set(probes, name=args.probes.name),
            kind="probe set",
            detail=lambda probe_set: f"{probe_set.image_count} images",
            quiet=args.quiet,
        )
    return model_id, probe_set_id


def _verdict(audit: AuditOut) -> Exit:
    if audit.policy is None or audit.policy.status == "passed":
        names = ", ".join(v.name for v in audit.policy.policies) if audit.policy else ""
        print(f"policy: passed ({names})" if names else "policy: none given")
        return Exit.OK
    print("policy: FAILED")
    for verdict in audit.policy.policies:
        for reason in verdict.reasons:
            print(f"  {verdict.name}: {reason}")
    return Exit.POLICY_FAILED


def _on_server(
    client: Client,
    find: Call[Page[FoundT]],
    upload: Call[StoredT],
    *,
    kind: str,
    detail: Callable[[StoredT], str],
    quiet: bool,
) -> uuid.UUID:
    """The team's copy of a file: the one `find` (by sha256) returns, else `upload`'s."""
    found = client.send(find).items
    if found:
        print(f"{kind} {found[0].id}: already on the server", file=sys.stderr)
        return found[0].id
    stored = client.send(upload, progress=None if quiet else _upload_bar())
    print(f"{kind} {stored.id}: uploaded ({detail(stored)})", file=sys.stderr)
    return stored.id


def _upload_bar() -> Callable[[int, int], None]:
    bar = ProgressBar(sys.stderr)

    def report(sent: int, total: int) -> None:
        bar(sent / total if total else 1.0, "upload")
        if sent >= total:
            bar.close()

    return report


def _report(args: argparse.Namespace) -> Exit:
    client, _ = _client()
    with client:
        if args.format == "html":
            text = client.send(api.get_report_html(args.audit_id))
        else:
            report = client.send(api.get_report(args.audit_id))
            json = args.format == "json"
            text = report.model_dump_json(indent=2) if json else format_summary(report)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return Exit.OK


def _compare(args: argparse.Namespace) -> Exit:
    if len(args.audit_ids) < 2:
        raise ShiftAuditError("compare needs at least two audits")
    client, _ = _client()
    with client:
        comparison = client.send(api.compare(args.audit_ids))
    for candidate in comparison.comparisons:
        kind = candidate.pairing + (f" ({candidate.reason})" if candidate.reason else "")
        print(f"{candidate.candidate} against {comparison.baseline}: {kind}")
        print(f"  {'metric':<28}{'baseline':>10}{'candidate':>10}{'delta':>10}  95% interval")
        for delta in candidate.deltas:
            interval = (
                f"[{delta.ci_low:+.4f}, {delta.ci_high:+.4f}]"
                if delta.ci_low is not None and delta.ci_high is not None
                else "-"
            )
            mark = "  significant" if delta.significant else ""
            print(
                f"  {delta.metric:<28}{delta.baseline:>10.4f}{delta.candidate:>10.4f}"
                f"{delta.delta:>+10.4f}  {interval}{mark}"
            )
        if candidate.mcnemar is not None:
            test = candidate.mcnemar
            print(
                f"  McNemar on per-probe invariance: {test.baseline_only} probes invariant in "
                f"the baseline only, {test.candidate_only} in the candidate only, "
                f"p = {test.p_value:.4g}{', significant' if test.significant else ''}"
            )
    return Exit.OK
