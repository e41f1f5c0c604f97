"""The engines that run the per-file work of a dataset run: ``local`` and ``ray``.

Every engine runs the same function on the same units — ``task(codec, in_path, out_path)`` for each
``(rel, in_path, out_path)`` of a to-do list, the unit's output written by that call — so the
outputs are the same bytes whichever engine ran them. ``local`` runs them in this process
(``workers=1``) or a pool of processes, each making its codec once (``fastae.codec.folder``).
``ray`` runs them as a Ray Data pipeline: a dataset of the units, ``map_batches`` with a callable
class that makes the codec once per actor, an actor pool of ``workers`` actors
(``ActorPoolStrategy``), ``gpus_per_worker`` GPUs each, ``batch_size`` units per call.
"""

import functools
import pickle

ENGINES = ("local", "ray")


def runner(engine="local", workers=1, gpus_per_worker=0, batch_size=1, ray_address=None, progress=True):
    """A callable ``run(todo, task, make_codec, record)`` for ``engine`` (what
    ``fastae.codec.folder.compress_folder`` takes as ``runner``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    for name, value in (("workers", workers), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be a number >= 0, got {gpus_per_worker!r}")
    if engine == "local":
        if gpus_per_worker:
            raise ValueError("gpus_per_worker applies to the ray engine (the local engine uses --device)")
        return functools.partial(_run_local, workers=workers)
    import ray  # noqa: F401 - a missing extra fails now, before any work

    return functools.partial(_run_ray, workers=workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                             address=ray_address, progress=progress)


def _run_local(todo, task, make_codec, record, workers):
    from fastae.codec import folder

    if workers == 1 or len(todo) <= 1:
        codec = make_codec()
        for rel, in_path, out_path in todo:
            record(rel, folder._run_task(task, codec, in_path, out_path))
    else:
        folder._process_pool(todo, task, make_codec, workers, record)


class _Worker:
    """The callable class of the Ray pipeline: one codec per actor, one task per unit."""

    def __init__(self, make_codec, task):
        from fastae.codec import folder

        self.task, self.codec, self.error = task, None, None
        try:
            self.codec = make_codec()
        except Exception as exc:  # reported by every result, so the run stops with the reason
            self.error = folder._message(exc)

    def __call__(self, batch):
        import numpy as np

        from fastae.codec import folder

        results = []
        for in_path, out_path in zip(batch["src"], batch["dst"]):
            if self.codec is None:
                result = ("fatal", self.error)
            else:
                result = folder._run_task(self.task, self.codec, str(in_path), str(out_path))
            results.append(pickle.dumps(result))
        return {"index": batch["index"], "result": np.array(results, dtype=object)}


def _run_ray(todo, task, make_codec, record, workers, gpus_per_worker, batch_size, address, progress):
    import ray

    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own bar counts files and images
        items = [{"index": i, "src": str(in_path), "dst": str(out_path)} for i, (_, in_path, out_path) in
                 enumerate(todo)]
        # at least one block per actor, so that every actor gets work
        blocks = min(len(items), max(workers, -(-len(items) // batch_size)))
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        dataset = dataset.map_batches(_Worker, fn_constructor_args=(make_codec, task), batch_size=batch_size,
                                      compute=ray.data.ActorPoolStrategy(size=workers), batch_format="numpy",
                                      num_cpus=1, num_gpus=gpus_per_worker or None)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for index, result in zip(batch["index"], batch["result"]):
                record(todo[int(index)][0], pickle.loads(result))
    finally:
        if started:
            ray.shutdown()
