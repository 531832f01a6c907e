"""The Ray engine: the local engine's job on a Ray cluster, in Ray Data's batch-inference pattern.

    inputs listed on the driver --> ray.data.from_items --> map_batches(decode) --> map_batches(model, actors)
        --> rows back on the driver --> records in input order

Nothing here is a second implementation: listing is `job.inputs` (sources.py), reading by scheme and the
offline policy `readers.Network`, decoding `pipeline.prepare`, batching `pipeline.stack`, the model
`runtimes.make_predictor` over `weights.build_model` (or an exported file's bytes, run by its runtime), what is
computed and the records the job's task (tasks.py); the command writes them, so formats, per-file stderr lines
and exit codes are the local engine's.

- Inputs are listed on the driver (folders, globs, stdin, URLs, s3:// and gs://: the local engine's rules,
  by the same code), each with its index
  in the output. An input that failed before decoding keeps its error and travels through like the others, so
  every input comes back as exactly one row.
- The model runs in an actor pool. The driver loads the weights once and puts the state dict in the object
  store: workers need no weights file and no network.
- With CUDA, decoding runs in Ray tasks (CPUs anywhere in the cluster) feeding one actor per GPU. On CPUs, each
  actor decodes its own batch and then runs it, one single-threaded actor per CPU: it is the plan Ray Data's
  operator fusion makes of two stages with equal resources, written out, because a separate decode stage
  would need CPUs the actors hold, and would deadlock if the fusion did not happen.
- An actor runs the same `inference.Predictor` as the local engine, on the same fixed forward shape: an
  image's probabilities do not depend on where Ray Data cut the batches, and equal the local engine's to the
  last bit.
- Rows come back in input order (Ray Data's preserve_order); a reorder buffer keyed by index keeps the output
  in order whatever Ray does, without waiting for the end.
- SIGINT/SIGTERM stop the run at once: what is written is a prefix of the input (for --resume); rows still on
  the cluster are dropped, as the local engine drops inputs it has not started.
- `--device auto` is the cluster's to decide (GPU actors when it has GPUs), and so is `--precision fp16`:
  the driver's own hardware does not matter.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import warnings
from collections.abc import Iterator

from ...core import errors as E
from ...core.errors import InputError, UsageError, first_line
from ...models.devices import default_batch_size
from ..job import RAY_HINT, Job
from ..pipeline import Prepared, default_workers, prepare, stack
from ...core.records import Failure, Record
from ...inputs.sources import Source

# from_items cuts the input list into at most this many blocks: enough for every CPU of a large cluster to
# get work, few enough that the driver's bookkeeping per block stays small for millions of inputs.
MAX_BLOCKS = 2000
STOP_WAIT_S = 30.0  # after a stop, how long to wait for Ray's batch in flight before shutting Ray down


# ---- decoding (Ray tasks) ----

# Strings that cross Ray as Arrow data are carried as bytes: a file name that is not UTF-8 (a surrogate escape)
# or an error message quoting one could not be an Arrow string.
def _to_bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def _from_bytes(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogateescape")


def decode_batch(batch, *, pre, fast_decode: bool, network):
    """Ray task: a batch of {index, path, error_type, error_message} -> {index, pixels, error_type,
    error_message}; pixels are crop*crop*3 RGB bytes, null for a failed input."""
    import pyarrow as pa

    pixels, types, messages = [], [], []
    for row in batch.select(["path", "error_type", "error_message"]).to_pylist():
        path = _from_bytes(row["path"])
        error = InputError(row["error_type"], _from_bytes(row["error_message"])) if row["error_type"] else None
        src = Source(path, error)
        p = prepare(src, pre, fast_decode, network)
        pixels.append(p.pixels)
        types.append(None if p.error is None else p.error.kind)
        messages.append(None if p.error is None else _to_bytes(p.error.message))
    return pa.table({
        "index": batch.column("index"),
        "pixels": pa.array(pixels, pa.binary()),
        "error_type": pa.array(types, pa.string()),
        "error_message": pa.array(messages, pa.binary()),
    })


# ---- the model (Ray actors) ----

class ModelActor:
    """Ray actor: builds the driver's model from its state dict once, then runs the job's task (tasks.py) on
    batches of rows, {index, pixels, error_type, error_message} -> {index, error_type, error_message, out0,
    out1, ...}: the task's outputs, one fixed-size list column each (zeros for a failed row). With `decode`, it
    takes the undecoded rows from_items makes and decodes them first (the CPU plan)."""

    def __init__(self, state, *, arch, preprocess, device: str, dtype, task, decode: bool = False,
                 fast_decode: bool = False, network=None) -> None:
        import ray
        import torch

        from ...models.formats import ExportedModel
        from ...models.runtimes import make_predictor
        from ...models.weights import build_model

        if isinstance(state, ray.ObjectRef):  # constructor arguments reach the actor as they were given
            state = ray.get(state)
        # As many threads as CPUs Ray reserved for this actor (an OMP_NUM_THREADS in the environment could say
        # otherwise): more would oversubscribe a node shared with other actors and decode tasks.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        # An exported file's bytes (formats.ExportedModel) are opened by its runtime; a state dict is built.
        module = state if isinstance(state, ExportedModel) else build_model(arch, state, "the driver's model")
        self.predictor = make_predictor(module, preprocess, device=torch.device(device), dtype=dtype)
        self.preprocess = preprocess
        self.task = task
        self.decode = decode
        self.fast_decode = fast_decode
        self.network = network

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        if self.decode:
            batch = decode_batch(batch, pre=self.preprocess, fast_decode=self.fast_decode, network=self.network)
        ok = batch.column("error_type").is_null().to_numpy(zero_copy_only=False)
        pixels = batch.column("pixels").filter(pa.array(ok)).to_pylist()
        batch = batch.drop_columns(["pixels"])
        if not pixels:
            return batch
        # The Predictor runs its one fixed shape, as in the local engine: the same bits.
        outputs = self.task.compute(self.predictor, stack([Prepared("", p) for p in pixels], self.preprocess.crop))
        for j, values in enumerate(outputs):
            column = np.zeros((batch.num_rows, *values.shape[1:]), values.dtype)
            column[ok] = values
            width = int(np.prod(values.shape[1:], dtype=np.int64))
            batch = batch.append_column(f"out{j}", pa.FixedSizeListArray.from_arrays(pa.array(column.ravel()),
                                                                                     width))
        return batch


# ---- the driver ----

def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra: pyarrow, pandas)
    except ImportError:
        raise UsageError(RAY_HINT) from None
    return ray


def connect(ray, address: str | None, num_cpus: int) -> bool:
    """Connect to the cluster at `address` (else RAY_ADDRESS), or start a private local Ray with `num_cpus`.
    Returns whether this call started Ray (and so must shut it down). Ray's own messages stay off stdout."""
    if ray.is_initialized():
        return False  # a caller's session (a notebook, a test): use it, leave it running
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # "local", not None: None would join whatever cluster `ray start` last left on this machine, and
            # a run without --ray-address should not depend on that.
            ray.init(address="local", num_cpus=num_cpus, **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UsageError(f"cannot start or reach {where}: {first_line(exc)}") from None
    return True


def _plan(ray, job: Job) -> tuple[str, int]:
    """(the actors' device type, how many model actors) from the options and the cluster's resources: the
    driver's own hardware does not matter."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    device, workers = job.options.device, job.options.workers
    kind = device.split(":")[0]
    if kind == "cuda" or (kind == "auto" and gpus > 0):
        if gpus == 0 and not workers:
            raise UsageError(f"--device {device}: the Ray cluster has no GPUs (give --workers N to wait for N)")
        return "cuda", workers or gpus
    if kind == "mps":
        return "mps", workers or 1  # one device per machine
    # One single-threaded actor per CPU, each decoding its own batches (module docstring): every CPU busy,
    # and no pixels cross between processes.
    return "cpu", workers or max(1, int(resources.get("CPU", 1)))


def records(job: Job, stop: threading.Event) -> Iterator[Record]:
    """The engine entry point (engines/__init__.py): the job's records, computed on a Ray cluster."""
    ray = import_ray()
    from ray.data import DataContext

    with warnings.catch_warnings():  # Ray's DataContext() sets its own deprecated fields (a DeprecationWarning
        # each, whatever a caller does); made once per process, here, without them
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context")
        DataContext.get_current()

    import torch

    from ...models.inference import load_for

    opts = job.options
    sources = list(job.inputs)
    if not sources:
        return
    # A Ray started here gets one CPU per model actor when the model runs on this machine's CPUs (--workers,
    # else every core); with a GPU, every core, for the decode tasks that feed it.
    cores = default_workers()
    on_cpu = opts.device == "cpu" or (opts.device == "auto" and not torch.cuda.is_available())
    started = connect(ray, opts.ray_address, (opts.workers or cores) if on_cpu else cores)
    ray_logger = logging.getLogger("ray.data")
    old_level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)  # "Running Dataset ..." and the like are Ray's business, not the user's
    # Ray Data warns when a run has fewer blocks than actors (one image, say): true, and nothing to act on.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    rows = None
    try:
        actor_device, actors = _plan(ray, job)
        if job.weights.runtime != "torch":  # an exported file runs on CPUs (formats.check_exported)
            actor_device = "cpu"
        # CPU actors: the precision is checked on this CPU, as the cluster's are taken to be alike. GPUs: what
        # they run is theirs to say.
        _, dtype, loaded, task = load_for(job, torch.device(actor_device), check_here=actor_device == "cpu")
        batch_size = default_batch_size(opts.batch_size, actor_device)
        ctx = DataContext.get_current().copy()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False  # the command draws the progress bar, on a terminal only
        ctx.print_on_execution_start = False
        with DataContext.current(ctx):
            ds = _dataset(ray, sources, loaded, job, task, actor_device=actor_device, actors=actors,
                          batch_size=batch_size, dtype=dtype)
            rows = _in_order(_rows(ds, sources, loaded, task, stop), sources, stop)
            yield from rows
    finally:
        if rows is not None:
            rows.close()  # the reader thread leaves Ray before Ray is shut down (see _rows)
        if started:
            ray.shutdown()
        ray_logger.setLevel(old_level)


def _dataset(ray, sources: list[Source], loaded, job: Job, task, *, actor_device: str, actors: int,
             batch_size: int, dtype):
    from ray.data import ActorPoolStrategy

    items = [{"index": i, "path": _to_bytes(s.path),
              "error_type": None if s.error is None else s.error.kind,
              "error_message": None if s.error is None else _to_bytes(s.error.message)}
             for i, s in enumerate(sources)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(MAX_BLOCKS, -(-len(items) // batch_size))))
    gpu = actor_device == "cuda"
    if gpu:
        ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
                            fn_kwargs={"pre": job.weights.preprocess, "fast_decode": job.options.fast_decode,
                                       "network": job.network})
    # No restarts: Ray cannot promise to restart an actor whose constructor arguments (the weights) live in the
    # object store (ray-project/ray#53727), and says so on stderr at every run (a core_worker.cc error line); and
    # an actor that runs out of memory again would be restarted forever. An actor that dies ends the run with an
    # error instead. Ray Data takes max_restarts only among its deprecated free-form remote arguments for now.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated", category=DeprecationWarning)
        return ds.map_batches(
            ModelActor, batch_size=batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=actors),
            num_cpus=1, num_gpus=1 if gpu else None, max_restarts=0,
            fn_constructor_kwargs={
                "state": ray.put(loaded.module if job.weights.runtime != "torch" else loaded.module.state_dict()),
                "arch": job.weights.arch,
                "preprocess": job.weights.preprocess, "device": actor_device, "dtype": dtype, "task": task,
                "decode": not gpu, "fast_decode": job.options.fast_decode, "network": job.network,
            })


def _batch_records(batch, sources: list[Source], loaded, task) -> list[tuple[int, Record]]:
    """(index, record) for each row of one output batch."""
    index = batch.column("index").to_pylist()
    types = batch.column("error_type").to_pylist()
    messages = batch.column("error_message").to_pylist()
    prepared = [Prepared(sources[i].path, None, None if t is None else InputError(t, _from_bytes(m)))
                for i, t, m in zip(index, types, messages)]
    ok = [r for r, t in enumerate(types) if t is None]
    outputs = None
    if ok:
        outputs = tuple(_matrix(batch.column(f"out{j}"), len(index))[ok]
                        for j in range(sum(name.startswith("out") for name in batch.column_names)))
    return list(zip(index, task.records(prepared, outputs, loaded.weights, loaded.labels)))


def _matrix(column, rows: int):
    """A fixed-size-list column as a (rows, k) numpy array."""
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(rows, -1)


_END = object()


def _rows(ds, sources: list[Source], loaded, task, stop) -> Iterator[tuple[int, Record]]:
    """(index, record) for each output row, in the order Ray delivers them; ends early once `stop` is set.
    Ray is read in a helper thread, so that a signal stops the output at once, even while actors start."""
    out: queue.Queue = queue.Queue(maxsize=4)
    quit = threading.Event()

    def put(item) -> bool:
        while not quit.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def read() -> None:
        batches = None
        try:
            batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
            for batch in batches:
                if not put(_batch_records(batch, sources, loaded, task)):
                    return
            put(_END)
        except BaseException as exc:  # handed to the driver's thread, raised there
            put(exc)
        finally:
            if hasattr(batches, "close"):
                batches.close()  # ends Ray Data's execution of the dataset now, before Ray is shut down

    reader = threading.Thread(target=read, name="ray-results", daemon=True)
    reader.start()
    try:
        while not stop.is_set():
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        quit.set()
        # The reader leaves once Ray hands it its next batch. It must be out before Ray is shut down: a Ray
        # call in a thread left behind would start a new Ray. A second Ctrl-C ends this wait at once.
        reader.join(timeout=STOP_WAIT_S)


def _in_order(rows: Iterator[tuple[int, Record]], sources: list[Source], stop) -> Iterator[Record]:
    """Records by index 0..len(sources)-1, each as soon as all before it are out."""
    waiting: dict[int, Record] = {}
    next_index = 0
    try:
        for i, rec in rows:
            waiting[i] = rec
            while next_index in waiting:
                yield waiting.pop(next_index)
                next_index += 1
    finally:
        rows.close()
    if stop.is_set():
        return  # interrupted: the output is a prefix of the input
    # Every input sends exactly one row; one that never came back is a bug, reported in its place.
    for i in range(next_index, len(sources)):
        yield waiting.pop(i, None) or Failure(sources[i].path, E.INTERNAL_ERROR, "row lost by the Ray engine")
