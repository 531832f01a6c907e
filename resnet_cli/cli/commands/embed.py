"""`resnet-classify embed`: the vector the classifier head receives, for every input, into a file.

    options --> api.build_job(Embed) --> engines.records(job) --> embeddings.open_output (by extension)

The same engines, batches and fixed forward shape as classify: a vector depends on its image and the options
only. Failures are records as in classify (stderr lines, exit code 1).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ...core.console import eprint
from ...models.devices import Precision
from ...run.job import Engine, InputOptions, ModelOptions, RunOptions
from ..options import (ArchOpt, BatchSizeOpt, CropOpt, DeviceOpt, EngineOpt, FastDecodeOpt, InputsArg, NullOpt,
                       OfflineOpt, PrecisionOpt, QuietOpt, RayAddressOpt, RecursiveOpt, ResizeOpt, WeightsOpt,
                       WorkersOpt)
from .stream import RecordStream


def command(
    inputs: InputsArg,
    output: Annotated[str, typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="Where the vectors go, by extension: .jsonl, .parquet (needs pyarrow) or .npy (with "
        "FILE.paths.jsonl naming each row).")],
    normalize: Annotated[bool, typer.Option(
        "--normalize", help="Scale every vector to unit length (L2), ready for cosine similarity.")] = False,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    recursive: RecursiveOpt = False,
    null: NullOpt = False,
    offline: OfflineOpt = False,
    fast_decode: FastDecodeOpt = False,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    quiet: QuietOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
) -> None:
    """Write each image's embedding: the vector the classifier head receives (512 or 2048 numbers)."""
    from ...outputs import embeddings
    from ...outputs.paths import check_outputs

    ext = embeddings.check_output(output)
    files = [("--output", output)] + ([("--output", embeddings.sidecar(output))] if ext == ".npy" else [])
    check_outputs(inputs, files, recursive=recursive, reads=(weights,))
    from ...api import build_job
    from ...run.tasks import Embed

    model = ModelOptions(arch, weights, resize, crop)
    options = RunOptions(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         fast_decode=fast_decode, engine=engine, ray_address=ray_address, offline=offline,
                         quiet=quiet)
    job = build_job(inputs, Embed(), model, options, listing=InputOptions(recursive, null))
    raise typer.Exit(run(job, output, normalize=normalize))


def run(job, output: str, *, normalize: bool = False) -> int:
    from ...outputs import embeddings
    from ...core.records import Embedding

    def open_output(rec):
        """The output, opened at the first record (the model is loaded by then): its width is the network's."""
        if isinstance(rec, Embedding):
            dim = len(rec.vector)
        else:
            from ...models.model import num_features

            dim = num_features(job.weights.arch)
        return embeddings.open_output(output, dim=dim, arch=job.weights.arch.name, weights=job.weights.name)

    out = None
    written = failed = 0
    ok = False
    with RecordStream(job, "embedding") as stream:
        try:
            for rec in stream:
                if out is None:
                    out = open_output(rec)
                if isinstance(rec, Embedding) and normalize:
                    rec = rec.normalized()
                out.write(rec)
                written += 1
                failed += not rec.ok
            if out is None:  # nothing to embed: an empty file all the same
                out = open_output(None)
            ok = True
        finally:
            if out is not None:
                out.close(ok=ok)
        code = stream.exit_code(failed)
    if stream.interrupted:
        eprint(f"interrupted: {written} record{'s' if written != 1 else ''} written to {output}")
    return code
