"""Several processes (issue 7): settings from flags and environment, and two processes on localhost
training together.

The two-process test starts this file twice as a script (`_run_worker`), each process with 2
simulated CPU devices, joined by `jax.distributed.initialize` through a coordinator on
127.0.0.1 (a free port; every wait bounded). Each trains two steps on its shard of the global
batch, saves a checkpoint together with the other, restores it onto one device, and gathers
the detections of both; the test compares what the two wrote with each other and with the
single-process input pipeline.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxdet import distributed
from jaxdet.distributed import DistributedSettings, distributed_settings, gather_detections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this file also runs as a script
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
GLOBAL_BATCH = 4
STEPS = 2
TRAIN_KEYS = ("images", "boxes", "labels", "valid", "image_hw", "scale")
WORKER_TIMEOUT_S = 240


def fake_detections(image_id: int) -> dict:
    """Per-image detections that differ from image to image (image_id % 3 of them)."""
    n = image_id % 3
    rows = np.arange(n, dtype=np.float32)[:, None]
    return {"boxes": image_id + rows + np.array([[0, 1, 2, 3]], np.float32), "scores": 1.0 / (1.0 + rows[:, 0]),
            "labels": (image_id + np.arange(n)).astype(np.int32) % 3}


# ----------------------------------------------------------------------------------------------
# Settings


def test_settings_default_to_one_process():
    settings = distributed_settings(environ={})
    assert settings == DistributedSettings() and not settings.multi_process


def test_settings_from_environment_and_flags_override_it():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    settings = distributed_settings(environ=env)
    assert (settings.coordinator_address, settings.num_processes, settings.process_id) == ("10.0.0.1:1234", 4, 3)
    assert settings.multi_process
    parser = argparse.ArgumentParser()
    distributed.add_arguments(parser)
    args = parser.parse_args(["--process-id", "1", "--coordinator-address", "host:99",
                              "--coordinator-bind-address", "127.0.0.1:99", "--distributed-timeout", "30"])
    settings = distributed.settings_from_args(args, environ=env)
    assert settings == DistributedSettings(coordinator_address="host:99", num_processes=4, process_id=1,
                                           bind_address="127.0.0.1:99", timeout_s=30)
    assert distributed.settings_from_args(parser.parse_args([]), environ={}) == DistributedSettings()


@pytest.mark.parametrize("kwargs, env, message", [
    (dict(num_processes=2, process_id=0), {}, "coordinator_address must be 'host:port'"),
    (dict(num_processes=2, coordinator_address="h:1"), {}, "no process id"),
    (dict(process_id=1), {}, "not the number of processes"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, r"process_id must be in \[0, 2\)"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), {}, "num_processes must be at least 1"),
    (dict(coordinator_address="h:70000", num_processes=2, process_id=0), {}, "port in"),
    (dict(coordinator_address="nohost", num_processes=2, process_id=0), {}, "'host:port'"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
    (dict(timeout_s=0), {}, "timeout_s must be at least 1"),
])
def test_bad_settings_name_what_is_wrong(kwargs, env, message):
    with pytest.raises(ValueError, match=message):
        distributed_settings(environ=env, **kwargs)


def test_one_process_reads_the_whole_batch():
    assert distributed.process_shard(6) == (6, 1, 0)
    with pytest.raises(ValueError, match="positive multiple"):
        distributed.process_shard(0)


# ----------------------------------------------------------------------------------------------
# Gathering detections (one process: the collectives are the identity)


def test_gather_detections_of_one_process_returns_them_all():
    local = {i: fake_detections(i) for i in (5, 0, 7, 3)}
    gathered = gather_detections(local)
    assert sorted(gathered) == [0, 3, 5, 7]
    for i, found in gathered.items():
        assert found.keys() == {"boxes", "scores", "labels"}
        for name, value in found.items():
            np.testing.assert_array_equal(value, local[i][name])
            assert value.dtype == distributed.DETECTION_FIELDS[name][1]
        assert found["boxes"].shape == (i % 3, 4)
    assert gather_detections({}) == {}


def test_gather_detections_rejects_malformed_input():
    with pytest.raises(ValueError, match="image 2: scores has shape"):
        gather_detections({2: {"boxes": np.zeros((2, 4)), "scores": np.zeros(3), "labels": np.zeros(2)}})
    with pytest.raises(ValueError, match="non-negative"):
        gather_detections({-1: fake_detections(1)})


# ----------------------------------------------------------------------------------------------
# Two processes on localhost


def _flat(tree) -> np.ndarray:
    import jax

    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(jax.device_get(tree))])


def _run_worker(out_dir: str) -> None:
    """One of the processes: settings from the environment (JAX_COORDINATOR_ADDRESS, ...)."""
    import dataclasses

    settings = distributed_settings()
    # Listen on loopback only, and give up early if the other process never comes.
    settings = dataclasses.replace(settings, bind_address=settings.coordinator_address, timeout_s=60)
    distributed.initialize(settings)

    import jax
    import jax.numpy as jnp

    from jaxdet.overrides import load_config
    from jaxdet.training import checkpoint_manager, create_train_state, restore_checkpoint, save_checkpoint, step_key
    from jaxdet.data.build import load_dataset, train_pipeline
    from jaxdet.devices import batch_layout, make_mesh, replicate, shard_batch
    from jaxdet.training.parallel import make_parallel_train_step

    pid = jax.process_index()
    assert (jax.process_count(), jax.device_count()) == (NUM_PROCESSES, NUM_PROCESSES * DEVICES_PER_PROCESS)
    config = load_config("tiny_shapes:smoke")
    config.train.batch_size = GLOBAL_BATCH
    shard = distributed.process_shard(GLOBAL_BATCH)
    pipeline = train_pipeline(config, load_dataset(config, "train"), num_shards=shard.num_shards,
                              shard_index=shard.shard_index)
    mesh = make_mesh()
    report = {"shard": list(shard), "layout": str(batch_layout(GLOBAL_BATCH, mesh)), "image_ids": [], "losses": []}
    state = replicate(create_train_state(config, jax.random.key(0)), mesh)
    step = make_parallel_train_step(mesh)
    for i in range(STEPS):
        local = pipeline.build_batch(i)
        report["image_ids"].append(local["image_id"].tolist())
        state, metrics = step(state, shard_batch({k: local[k] for k in TRAIN_KEYS}, mesh), step_key(state))
        report["losses"].append(float(metrics["loss"]))
    params = _flat(state.params)

    # Saved by both processes together, restored onto one device of each.
    manager = checkpoint_manager(os.path.join(out_dir, "checkpoints"), async_save=False)
    save_checkpoint(manager, state, data_state={"next_step": STEPS}, force=True)
    device = jax.local_devices()[0]
    # Zeros (keys as they are), so that the restored values can only come from the checkpoint.
    one_device = jax.tree.map(lambda x: jax.device_put(x.addressable_data(0), device)
                              if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                              else jnp.zeros(x.shape, x.dtype, device=device), state)
    restored, data_state = restore_checkpoint(manager, one_device)
    manager.close()
    report["restored_devices"] = len(jax.tree.leaves(restored.params)[0].sharding.device_set)
    report["restored_step"], report["data_state"] = int(restored.step), data_state

    gathered = gather_detections({i: fake_detections(i) for i in report["image_ids"][0]})
    report["gathered"] = {str(i): {k: v.tolist() for k, v in found.items()} for i, found in gathered.items()}

    np.savez(os.path.join(out_dir, f"params_{pid}.npz"), params=params, restored=_flat(restored.params))
    with open(os.path.join(out_dir, f"report_{pid}.json"), "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(out_dir: str) -> list:
    """Starts the workers and waits for both (bounded); if one fails, the other is stopped."""
    port = _free_port()
    workers = []
    for pid in range(NUM_PROCESSES):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
                   JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(NUM_PROCESSES),
                   JAX_PROCESS_ID=str(pid))
        log = open(os.path.join(out_dir, f"log_{pid}.txt"), "w")
        workers.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), out_dir], cwd=REPO, env=env,
                                         stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        while any(p.poll() is None for p, _ in workers):
            failed = any(p.poll() not in (None, 0) for p, _ in workers)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p, log in workers:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    codes = [p.returncode for p, _ in workers]
    if codes != [0] * NUM_PROCESSES:
        logs = "".join(f"\n--- process {pid} (exit {code}) ---\n" + open(os.path.join(out_dir, f"log_{pid}.txt")).read()[-5000:]
                       for pid, code in enumerate(codes))
        pytest.fail(f"the two processes did not both finish within {WORKER_TIMEOUT_S} s:{logs}")
    reports = []
    for pid in range(NUM_PROCESSES):
        with open(os.path.join(out_dir, f"report_{pid}.json")) as f:
            reports.append((json.load(f), dict(np.load(os.path.join(out_dir, f"params_{pid}.npz")))))
    return reports


def test_two_processes_train_together_and_agree(tmp_path):
    from jaxdet.overrides import load_config
    from jaxdet.data.build import load_dataset, train_pipeline

    reports = _run_processes(str(tmp_path))
    (first, arrays_0), (second, arrays_1) = reports
    # Process p read shard p of each global batch: together, the single-process pipeline's batches.
    config = load_config("tiny_shapes:smoke")
    config.train.batch_size = GLOBAL_BATCH
    whole = train_pipeline(config, load_dataset(config, "train"))
    for i in range(STEPS):
        assert first["image_ids"][i] + second["image_ids"][i] == whole.batch_indices(i)[0].tolist()
    assert first["shard"] == [GLOBAL_BATCH // 2, 2, 0] and second["shard"] == [GLOBAL_BATCH // 2, 2, 1]
    assert first["layout"] == "global batch 4 = 2 processes x 2 images = 4 devices x 1 image"
    # One program over both processes: the same losses and, bit for bit, the same parameters.
    assert first["losses"] == second["losses"]
    assert first["losses"][0] != first["losses"][1]  # the first step changed the model
    np.testing.assert_array_equal(arrays_0["params"], arrays_1["params"])
    # The checkpoint of 4 devices restored onto 1 device of each process.
    for report, arrays in reports:
        assert report["restored_devices"] == 1 and report["restored_step"] == STEPS
        assert report["data_state"] == {"next_step": STEPS}
        np.testing.assert_array_equal(arrays["restored"], arrays_0["params"])
    # Detections gathered from both processes: every image of the first batch, on each process.
    expected = {i: fake_detections(i) for i in first["image_ids"][0] + second["image_ids"][0]}
    for report, _ in reports:
        assert sorted(int(i) for i in report["gathered"]) == sorted(expected)
        for i, found in report["gathered"].items():
            for name, value in found.items():
                np.testing.assert_array_equal(np.asarray(value, np.float32).reshape(expected[int(i)][name].shape),
                                              expected[int(i)][name])


if __name__ == "__main__":
    _run_worker(sys.argv[1])
