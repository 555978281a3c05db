"""`nightingale batch --ray`: the same job on Ray actors, one model (a runner.Synthesizer) per actor.

Ray's ActorPool hands each idle actor the next item; results come back to the driver as they
finish, and the driver writes the files and the manifest (runner.run), exactly as a local run.
Actors ask for one CPU each and are spread over the cluster's nodes. Needs the `[ray]` extra, and
on a cluster the same nightingale-mlx (and the model and voice paths) on every node.
"""

from typing import Iterator, List, Optional

LOCAL = "local"


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'nightingale-mlx[ray]'") from None
    return ray


def executor(address: Optional[str] = LOCAL, workers: int = 2):
    """A runner executor on a new local Ray instance (ADDRESS 'local') or the cluster at ADDRESS."""
    ray = _ray()
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")

    def results(job, tasks: List[dict]) -> Iterator[dict]:
        if not tasks:
            return
        from ray.util import ActorPool

        from .runner import Synthesizer

        started = not ray.is_initialized()
        if started:
            kwargs = dict(num_cpus=workers) if address in (None, LOCAL) else dict(address=address)
            try:
                ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
            except ConnectionError as e:
                raise ValueError(f"--ray {address}: cannot connect to a Ray cluster there ({e}); start one with "
                                 "`ray start --head`") from None
        speaker = ray.remote(num_cpus=1)(Synthesizer)
        actors = [speaker.options(scheduling_strategy="SPREAD").remote(job.model) for _ in range(workers)]
        try:
            pool = ActorPool(actors)
            for task in tasks:
                pool.submit(lambda actor, t: actor.run.remote(t), task)
            while pool.has_next():
                yield pool.get_next_unordered()
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    return results
