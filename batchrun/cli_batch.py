"""``batchrun cancel``: click only; the work is :func:`batchrun.batchcancel.cancel_batches`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.batchcancel import cancel_batches
from batchrun.cli_common import Stdout, fail, run_async
from batchrun.connect import get_api_key
from batchrun.errors import BatchrunError, UsageError
from batchrun.io.remote import location
from batchrun.job import DEFAULT_API_KEY_ENV
from batchrun.settings import job_from_settings, resolve_settings


@click.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
# A plain string: click's Path would make s3://b/k of an output in object storage s3:/b/k.
@click.option("--output", help="The job's OUTPUT (a path or a URI such as s3://bucket/key).")
@click.option("--base-url", help="API base URL. [default: the one the job's checkpoint records]")
@click.option(
    "--api-key-env",
    help=f"Environment variable holding the API key. [default: {DEFAULT_API_KEY_ENV}]",
)
def cancel(
    job_file: Path | None, output: str | None, base_url: str | None, api_key_env: str | None
) -> None:
    """Cancel the open batches of a --mode batch job: JOB_FILE, or --output OUT.

    Requests not yet processed end canceled; the next run records them as batch_canceled
    error rows (--retry-failed sends them again).
    """
    out = Stdout()
    try:
        if job_file is None and output is None:
            raise UsageError("name the job: JOB_FILE or --output OUT")
        settings = resolve_settings(job_file, {"output": output or None})
        if "input" not in settings:  # the job needs one; cancelling reads only the journal
            settings["input"] = str(location(settings["output"]).with_suffix(".jsonl"))
        if base_url is not None:
            settings["base_url"] = base_url
        if api_key_env is not None:
            settings["api_key_env"] = api_key_env
        job = job_from_settings(settings)
        key = get_api_key(job)
        lines = run_async(
            cancel_batches(
                job.checkpoint_dir,
                str(job.output_path),
                key,
                base_url=job.base_url if job_file is not None or base_url else None,
                api_key_env=job.api_key_env,
            )
        )
    except BatchrunError as exc:
        fail(exc)
    for line in lines:
        out.echo(f"batchrun: {line}")
    sys.exit(0)
