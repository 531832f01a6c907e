"""`resnet-classify embed`: the vector the classifier head receives, for every input, into a file.

    options --> job.make_job(embed=True) --> engines.records(job) --> embeddings.open_output (by extension)

The same engines, batches and fixed forward shape as classify: a vector depends on its image and the options
only. Failures are records as in classify (stderr lines, exit code 1).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..console import eprint
from ..job import Engine, Precision, make_job
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
    from .. import embeddings
    from .classify import check_outputs

    ext = embeddings.check_output(output)
    files = [("--output", output)] + ([("--output", embeddings.sidecar(output))] if ext == ".npy" else [])
    check_outputs(inputs, files, recursive=recursive, reads=(weights,))
    job = make_job(inputs, arch=arch, weights=weights, topk=1, device=device, precision=precision,
                   batch_size=batch_size, workers=workers, recursive=recursive, null_separated=null,
                   offline=offline, fast_decode=fast_decode, resize=resize, crop=crop, quiet=quiet, engine=engine,
                   ray_address=ray_address, embed=True)
    raise typer.Exit(run(job, output, normalize=normalize))


def run(job, output: str, *, normalize: bool = False) -> int:
    from .. import embeddings
    from ..records import Embedding

    dim = 512 if job.weights.arch.block == "basic" else 2048  # layer4's channels
    out = embeddings.open_output(output, dim=dim, arch=job.weights.arch.name, weights=job.weights.name)
    written = failed = 0
    ok = False
    with RecordStream(job, "embedding") as stream:
        try:
            for rec in stream:
                if isinstance(rec, Embedding) and normalize:
                    norm = float((rec.vector.astype("float64") ** 2).sum() ** 0.5)
                    rec = Embedding(rec.path, rec.arch, rec.weights, (rec.vector / norm if norm else rec.vector)
                                    .astype("float32"))
                out.write(rec)
                written += 1
                failed += not rec.ok
            ok = True
        finally:
            out.close(ok=ok)
        code = stream.exit_code(failed)
    if stream.interrupted:
        eprint(f"interrupted: {written} record{'s' if written != 1 else ''} written to {output}")
    return code
